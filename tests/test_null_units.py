"""Rows whose privacy unit is null: ``privacy.null_units: drop`` (default) leaves them out, row by row, on every
engine; ``error`` refuses the job in its first pass over the data, before any noise, naming the column, no count."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import assert_same_cubes, pair_counts, small_spec, small_table
from dpbeam.aggregate import BoundedCodes
from dpbeam.bounding import BoundingKey
from dpbeam.errors import SourceError
from dpbeam.job import measure, plan_job
from dpbeam.spec import parse_spec
from transforms import local

KEY = BoundingKey(b"null-units-test-key-0123456789ab")
K = 2
NULLS = 267  # rows whose unit is null; no message may carry this count


@pytest.fixture
def tables(tmp_path) -> tuple[str, str]:
    """Two sources in two files each: one with NULLS rows whose user_id is null, the same without those rows."""
    table = small_table(n=3000, seed=5, units=250)
    users = table.column("user_id").to_numpy().astype(object)
    null_rows = np.random.default_rng(0).choice(3000, NULLS, replace=False)
    users[null_rows] = None
    with_nulls = table.set_column(0, "user_id", pa.array(users, pa.int64()))
    clean = with_nulls.filter(pa.array(~np.isin(np.arange(3000), null_rows)))
    dirs = []
    for name, t in (("with_nulls", with_nulls), ("clean", clean)):
        d = tmp_path / name
        d.mkdir()
        half = t.num_rows // 2
        pq.write_table(t.slice(0, half), d / "part-0.parquet")
        pq.write_table(t.slice(half), d / "part-1.parquet")
        dirs.append(str(d))
    return dirs[0], dirs[1]


def _plan(source: str, tmp_path, **privacy):
    spec = small_spec(source, str(tmp_path / "out"), unit={"column": "user_id"}, max_rows_per_unit=K, **privacy)
    return plan_job(parse_spec(spec), check_outputs=False)


def _engine(name: str, request):
    if name == "beam":
        pytest.importorskip("apache_beam")
        from transforms import beam

        return lambda *a, **kw: beam.run_aggregation(*a, runner="FnApiRunner", partitions=3, **kw)
    if name == "spark":
        spark = request.getfixturevalue("spark")
        from transforms import spark as spark_engine

        return lambda *a, **kw: spark_engine.run_aggregation(*a, spark=spark, partitions=3, **kw)
    return local.run_aggregation


@pytest.mark.parametrize("engine", ["local", "beam", "spark"])
def test_drop_gives_the_counts_of_the_table_without_those_rows(engine, tables, tmp_path, request):
    run = _engine(engine, request)
    with_nulls, clean = tables
    plan, plan_clean = _plan(with_nulls, tmp_path), _plan(clean, tmp_path)
    assert plan.spec.privacy.null_units == "drop"  # the default
    for aggregation in (BoundedCodes(plan.domain), pair_counts(plan)):
        got = run(plan.source, aggregation, "user_id", K, KEY, null_units="drop")
        want = local.run_aggregation(plan_clean.source, aggregation, "user_id", K, KEY)
        if isinstance(want, dict):
            assert_same_cubes(got, want)
        else:
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("engine", ["local", "beam", "spark"])
def test_error_refuses_naming_the_column_without_a_count(engine, tables, tmp_path, request):
    run = _engine(engine, request)
    plan = _plan(tables[0], tmp_path, null_units="error")
    with pytest.raises(SourceError) as info:
        run(plan.source, pair_counts(plan), "user_id", K, KEY, null_units="error")
    msg = str(info.value)
    assert "privacy-unit column 'user_id'" in msg and "privacy.null_units: drop" in msg, msg
    assert str(NULLS) not in msg and "Traceback" not in msg
    # a table without null units passes under error too
    clean = _plan(tables[1], tmp_path, null_units="error")
    run(clean.source, pair_counts(clean), "user_id", K, KEY, null_units="error")


def test_error_is_raised_in_the_first_pass_before_any_noise(tables, tmp_path):
    """With k and a domain left to DP discovery, the first pass is discovery's: the job stops there, nothing spent."""
    spec = small_spec(tables[0], str(tmp_path / "out"), unit={"column": "user_id"}, max_rows_per_unit="auto",
                      discovery_fraction=0.1, null_units="error")
    del spec["columns"]["age"]["bounds"]
    plan = plan_job(parse_spec(spec), check_outputs=False)
    with pytest.raises(SourceError, match="null_units"):
        measure(plan, "local", key=KEY)
    assert plan.accountant.spent() == 0.0


def test_drop_runs_the_whole_measurement(tables, tmp_path):
    plan = _plan(tables[0], tmp_path)
    artifact = measure(plan, "local", key=KEY)
    assert artifact.privacy["max_rows_per_unit"] == K
