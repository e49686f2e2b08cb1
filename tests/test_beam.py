"""The Beam engine (transforms/beam.py): the same bounded rows and exact cubes as the local engine, on the FnApiRunner
and on the direct runner with two worker processes, from Parquet and CSV; its composable transforms in a pipeline
built by hand give the same cubes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import assert_same_cubes, pair_counts, small_spec, small_table
from dpbeam.aggregate import BoundedCodes
from dpbeam.bounding import BoundingKey
from dpbeam.job import plan_job
from dpbeam.progress import Ticker
from dpbeam.spec import parse_spec
from transforms import local

beam = pytest.importorskip("apache_beam")
from transforms import beam as beam_engine  # noqa: E402

KEY = BoundingKey(b"beam-engine-test-key-0123456789a")
FN_API = {"runner": "FnApiRunner"}
MULTI_PROCESS = {"runner": "DirectRunner", "direct_num_workers": 2, "direct_running_mode": "multi_processing"}


def _plan(source: str, tmp_path, **privacy):
    return plan_job(parse_spec(small_spec(source, str(tmp_path / "out"), **privacy)), check_outputs=False)


def _both(plan, aggregation, **options):
    k = plan.spec.privacy.k
    got = beam_engine.run_aggregation(plan.source, aggregation, plan.unit_column, k, KEY, **options)
    return got, local.run_aggregation(plan.source, aggregation, plan.unit_column, k, KEY)


@pytest.mark.parametrize("options", [FN_API, MULTI_PROCESS], ids=["fn_api", "multi_processing"])
@pytest.mark.parametrize("unit", [None, "user_id"])
def test_beam_equals_local(unit, options, units_dir, tmp_path):
    privacy = {"unit": {"column": unit}, "max_rows_per_unit": 2} if unit else {}
    plan = _plan(units_dir, tmp_path, **privacy)
    files = Ticker()
    got, want = _both(plan, BoundedCodes(plan.domain), partitions=5, advance=files, **options)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == want.dtype
    assert (files.completed, files.total, files.unit) == (3, 3, "files")  # public units of the listing, never rows
    if unit:
        assert len(want) < 3000  # bounding dropped rows, so the comparison covers it
    assert_same_cubes(*_both(plan, pair_counts(plan), partitions=5, **options))


def test_summary_file_is_removed_from_temp_location(units_dir, tmp_path):
    plan = _plan(units_dir, tmp_path, unit={"column": "user_id"}, max_rows_per_unit=2)
    temp = tmp_path / "beam-temp"
    got, want = _both(plan, pair_counts(plan), temp_location=str(temp), **FN_API)
    assert_same_cubes(got, want)
    assert temp.is_dir() and not any(temp.iterdir())


def test_heavy_unit_is_bounded_to_k(tmp_path):
    """One unit with 5,000 rows among small ones keeps exactly k rows, the same k rows as the local engine."""
    heavy = small_table(n=5000, seed=11).add_column(0, "user_id", pa.array(np.full(5000, 10_000, dtype=np.int64)))
    light = small_table(n=600, seed=12, units=150)
    path = tmp_path / "heavy.parquet"
    pq.write_table(pa.concat_tables([heavy.cast(light.schema), light]), path, row_group_size=700)
    k = 4
    plan = _plan(str(path), tmp_path, unit={"column": "user_id"}, max_rows_per_unit=k)
    got, want = _both(plan, BoundedCodes(plan.domain), partitions=4, **FN_API)
    np.testing.assert_array_equal(got, want)
    per_unit = np.unique(light.column("user_id").to_numpy(), return_counts=True)[1]
    expected = k + int(np.minimum(per_unit, k).sum())  # the heavy unit (10,000) keeps k; each light unit min(rows, k)
    assert len(got) == expected
    cubes, _ = _both(plan, pair_counts(plan), partitions=4, **FN_API)
    assert int(cubes[("color",)].sum()) == expected


def test_csv_source(tmp_path):
    """Read with the local engine's reader, including empty string fields (read as "", not null)."""
    table = small_table(n=1500, seed=5, units=120)
    color = table.column("color").to_numpy(zero_copy_only=False).astype(object)
    color[::50] = None
    table = table.set_column(table.schema.get_field_index("color"), "color", pa.array(color, pa.string()))
    d = tmp_path / "csv"
    d.mkdir()
    pacsv.write_csv(table.slice(0, 800), d / "a.csv")
    pacsv.write_csv(table.slice(800), d / "b.csv")
    plan = _plan(str(d / "*.csv"), tmp_path, unit={"column": "user_id"}, max_rows_per_unit=3)
    assert plan.source.format == "csv"
    got, want = _both(plan, BoundedCodes(plan.domain), partitions=3, **FN_API)
    np.testing.assert_array_equal(got, want)
    rows = _plan(str(d / "*.csv"), tmp_path)
    got, want = _both(rows, BoundedCodes(rows.domain), **FN_API)
    np.testing.assert_array_equal(got, want)
    assert len(want) == 1500


def test_composable_transforms_in_a_hand_built_pipeline(units_dir, tmp_path):
    """A user's own pipeline: Beam's Parquet reader, then PrepareBatches | BoundContributions | Summarize, and the
    whole-job MeasureMarginals beside it, give the local engine's cubes."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.util import assert_that

    plan = _plan(units_dir, tmp_path, unit={"column": "user_id"}, max_rows_per_unit=2)
    counts = pair_counts(plan)
    want = local.run_aggregation(plan.source, counts, "user_id", 2, KEY)

    def same_as_local(summaries):
        assert len(summaries) == 1
        assert_same_cubes(summaries[0], want)

    with beam.Pipeline(runner=FnApiRunner()) as p:
        tables = p | beam.io.ReadFromParquetBatched(f"{units_dir}/*.parquet", columns=counts.columns + ["user_id"])
        # pyarrow.Table: one row group of one file
        prepared = tables | beam_engine.PrepareBatches(counts, "user_id", KEY)
        bounded = prepared | beam_engine.BoundContributions(counts, 2, KEY, partitions=7)
        cubes = bounded | beam_engine.Summarize(counts)
        assert_that(cubes, same_as_local, label="StepByStep")
        batches = p | "Read" >> beam_engine.ReadSource(plan.source, counts.columns + ["user_id"])
        whole = batches | beam_engine.MeasureMarginals(plan.domain, counts.cliques, "user_id", 2, KEY, partitions=3)
        assert_that(whole, same_as_local, label="WholeJob")


def test_empty_input_summarizes_to_zero():
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.util import assert_that, equal_to

    with beam.Pipeline(runner=FnApiRunner()) as p:
        nothing = p | beam.Create([]).with_output_types(pa.RecordBatch)
        rows = nothing | beam_engine.Summarize(_RowCount())
        assert_that(rows, equal_to([0]))


class _RowCount:
    """A minimal aggregation (rows counted), for the empty-input check."""

    columns: list[str] = []

    def partial(self, prepared):
        return prepared.num_rows

    def merge(self, a, b):
        return a + b

    def zero(self):
        return 0


def test_bad_options_are_refused(units_dir, tmp_path):
    plan = _plan(units_dir, tmp_path, unit={"column": "user_id"}, max_rows_per_unit=2)
    with pytest.raises(ValueError, match="partitions"):
        beam_engine.run_aggregation(plan.source, pair_counts(plan), "user_id", 2, KEY, partitions=0)
