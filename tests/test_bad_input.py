"""Every bad input gets a clear error naming the field or column, before any budget is spent, and writes nothing."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import small_spec
from dpbeam.errors import OutputExistsError, SourceError, SpecError
from dpbeam.job import plan_job, run_job
from dpbeam.spec import load_spec, parse_spec


def _plan(spec: dict):
    return plan_job(parse_spec(spec))


def _expect(spec: dict, exc: type, *fragments: str):
    with pytest.raises(exc) as info:
        run_job(parse_spec(spec))
    msg = str(info.value)
    for f in fragments:
        assert f in msg, msg
    return msg


@pytest.fixture
def good(small_parquet, tmp_path):
    return small_spec(small_parquet, str(tmp_path / "out"))


def _nothing_written(spec: dict) -> None:
    out = spec["output"]["uri"]
    assert not os.path.exists(out) and not os.path.exists(out + ".measurements")


@pytest.mark.parametrize("eps", [0, -1.0, float("inf")])
def test_epsilon_must_be_positive(good, eps):
    good["privacy"]["epsilon"] = eps
    _expect(good, SpecError, "privacy.epsilon", "positive")
    _nothing_written(good)


@pytest.mark.parametrize("delta", [0, 1e-2, 1.0, -1e-9])
def test_delta_range(good, delta):
    good["privacy"]["delta"] = delta
    _expect(good, SpecError, "privacy.delta", "(0, 0.001]")
    _nothing_written(good)


def test_delta_against_expected_units(good):
    good["privacy"]["expected_units"] = 10_000
    good["privacy"]["delta"] = 1e-3
    _expect(good, SpecError, "expected_units")


def test_k_at_least_one(good):
    good["privacy"].update(unit={"column": "color"}, max_rows_per_unit=0)
    _expect(good, SpecError, "privacy.max_rows_per_unit", ">= 1")


def test_row_unit_needs_k_one(good):
    good["privacy"]["max_rows_per_unit"] = 3
    _expect(good, SpecError, "unit: row")


def test_unknown_column(good):
    good["columns"]["salary"] = {"kind": "integer", "bounds": [0, 10]}
    _expect(good, SpecError, "salary", "not in the source")
    _nothing_written(good)


def test_wrong_kind(good):
    good["columns"]["color"] = {"kind": "integer", "bounds": [0, 10]}
    _expect(good, SpecError, "color", "string", "kind: integer")


def test_datetime_kind_on_a_string_column_says_how_to_store_it(good):
    """Dates kept as strings (ISO text from pandas or CSV exports) are not parsed: the error says to write the column
    as a timestamp upstream, or to keep it categorical."""
    good["columns"]["color"] = {"kind": "datetime", "bounds": ["2020-01-01", "2021-01-01"]}
    _expect(good, SpecError, "color", "string", "kind: datetime", "pd.to_datetime", "kind: categorical")
    _nothing_written(good)


def test_unknown_kind(good):
    good["columns"]["color"] = {"kind": "colour"}
    _expect(good, SpecError, "columns.color")


def test_missing_bounds(good):
    good["columns"]["age"] = {"kind": "integer"}
    _expect(good, SpecError, "age", "bounds")


def test_column_with_no_domain(good):
    good["columns"]["color"] = {"kind": "categorical"}
    _expect(good, SpecError, "color", "values")


def test_values_of_wrong_type(good):
    good["columns"]["color"] = {"kind": "categorical", "values": ["red", 3.5]}
    _expect(good, SpecError, "color")


def test_inverted_bounds(good):
    good["columns"]["age"] = {"kind": "integer", "bounds": [80, 18]}
    _expect(good, SpecError, "columns.age", "lo > hi")


def test_empty_source(good, tmp_path):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"color": pa.array([], pa.string())}).slice(0, 0), empty)
    good["source"]["uri"] = str(empty)
    good["columns"] = {"color": good["columns"]["color"]}
    _expect(good, SourceError, "no rows")
    _nothing_written(good)


def test_missing_source(good, tmp_path):
    good["source"]["uri"] = str(tmp_path / "nope.parquet")
    _expect(good, SourceError, "does not exist")


def test_output_exists(good):
    os.makedirs(good["output"]["uri"])
    open(os.path.join(good["output"]["uri"], "part-0.parquet"), "w").write("x")
    _expect(good, OutputExistsError, good["output"]["uri"], "overwrite")
    assert not os.path.exists(good["output"]["uri"] + ".measurements")


def test_measurements_output_exists(good):
    os.makedirs(good["output"]["uri"] + ".measurements")
    open(good["output"]["uri"] + ".measurements/x", "w").write("x")
    _expect(good, OutputExistsError, "measurements")
    assert not os.path.exists(good["output"]["uri"])


def test_raw_output_refused(good):
    good["output"]["raw"] = True
    _expect(good, SpecError, "output.raw", "never writes raw")


def test_unit_column_missing(good):
    good["privacy"]["unit"] = {"column": "user_id"}
    _expect(good, SpecError, "user_id", "privacy.unit.column")


def test_unit_column_not_synthesized(users_parquet, tmp_path):
    spec = small_spec(users_parquet, str(tmp_path / "out"), unit={"column": "user_id"})
    spec["columns"]["user_id"] = {"kind": "integer", "bounds": [0, 1000]}
    _expect(spec, SpecError, "user_id", "never synthesized")


def test_unknown_field(good):
    good["privacy"]["epsilion"] = 1.0
    _expect(good, SpecError, "epsilion")


def test_null_in_non_nullable_column(good, tmp_path):
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"color": pa.array(["red", None, "blue"])}), path)
    good["source"]["uri"] = str(path)
    good["columns"] = {"color": {**good["columns"]["color"], "nullable": False}}
    _expect(good, SourceError, "color", "nullable: true")
    _nothing_written(good)


def test_yaml_spec_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")


def test_relative_paths_resolve_against_spec_file(tmp_path, small_parquet):
    (tmp_path / "jobs").mkdir()
    spec = tmp_path / "jobs" / "job.yaml"
    spec.write_text(
        "source: {uri: ../small.parquet}\nprivacy: {epsilon: 1, delta: 1.0e-6}\n"
        "columns: {color: {kind: categorical, values: [red]}}\noutput: {uri: out/t}\n"
    )
    job = load_spec(spec)
    assert job.source.uri == small_parquet
    assert job.output.uri == str(tmp_path / "jobs" / "out" / "t")


def _users_spec(source, tmp_path, **privacy):
    return small_spec(source, str(tmp_path / "out"), unit={"column": "user_id"}, max_rows_per_unit=2, **privacy)


def test_unit_column_all_null_with_null_units_error(tmp_path):
    from conftest import small_table

    t = small_table(200)
    t = t.append_column("user_id", pa.nulls(200, pa.int64()))
    pq.write_table(t, tmp_path / "t.parquet")
    spec = _users_spec(str(tmp_path / "t.parquet"), tmp_path, null_units="error")
    msg = _expect(spec, SourceError, "privacy-unit column 'user_id'", "null", "privacy.null_units: drop")
    assert "200" not in msg  # no count from the data
    _nothing_written(spec)


def test_non_parquet_file_in_source_directory(tmp_path):
    from conftest import small_table

    d = tmp_path / "src"
    d.mkdir()
    pq.write_table(small_table(100), d / "a.parquet")
    (d / "notes.txt").write_text("hello")
    (d / "_SUCCESS").write_text("")  # marker files are skipped, as Spark does
    spec = small_spec(str(d), str(tmp_path / "out"))
    _expect(spec, SourceError, "notes.txt", "not Parquet")
    (d / "notes.txt").unlink()
    plan_job(parse_spec(spec))  # now fine


def test_schema_differs_between_files(tmp_path):
    from conftest import small_table

    d = tmp_path / "src"
    d.mkdir()
    pq.write_table(small_table(100), d / "a.parquet")
    other = small_table(100)
    other = other.set_column(other.schema.get_field_index("age"), "age", other.column("age").cast(pa.float64()))
    pq.write_table(other, d / "b.parquet")
    _expect(small_spec(str(d), str(tmp_path / "out")), SourceError, "age", "b.parquet", "int64", "double")


def test_a_unit_with_very_many_rows_is_bounded_not_refused(tmp_path):
    from conftest import small_table

    t = small_table(30_000)
    users = np.where(np.arange(30_000) < 25_000, 0, np.arange(30_000))  # one unit holds 25,000 rows
    pq.write_table(t.append_column("user_id", pa.array(users)), tmp_path / "t.parquet")
    plan = plan_job(parse_spec(_users_spec(str(tmp_path / "t.parquet"), tmp_path)))
    from dpbeam.aggregate import BoundedCodes
    from dpbeam.bounding import BoundingKey
    from transforms.local import run_aggregation

    kept = run_aggregation(plan.source, BoundedCodes(plan.domain), "user_id", 2, BoundingKey.fresh())
    assert len(kept) == 2 + 5_000  # the big unit keeps k = 2 rows; the 5,000 single-row units keep theirs
