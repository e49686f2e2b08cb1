"""`dpbeam init`: a spec from the schema alone (no row read), that `dpbeam run` runs as written."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from dpbeam.cli import app
from dpbeam.init_spec import init_spec_text, kind_of
from dpbeam.spec import load_spec

FAST = ["--set", "synthesizer.iters=50"]


def _table(n: int = 2000, users: int = 400, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n)
    income = np.round(age * 800 + rng.normal(0, 5000, n), 2)
    start = np.datetime64("2024-01-01", "D")
    return pa.table({
        "user_id": pa.array(rng.integers(0, users, n)),
        "city": pa.array(rng.choice(["berlin", "paris", "rome"], n, p=[0.5, 0.3, 0.2])),
        "plan": pa.array(rng.choice(["free", "pro"], n)).dictionary_encode(),
        "age": pa.array(age),
        "income": pa.array(income, mask=rng.random(n) < 0.1),
        "signup": pa.array((start + rng.integers(0, 365, n)).astype("datetime64[us]")),
        "day": pa.array((start + rng.integers(0, 365, n)).astype("datetime64[D]")),
        "active": pa.array(age < 40),
        "tags": pa.array([["a"]] * n, type=pa.list_(pa.string())),
        "blob": pa.array([b"x"] * n, type=pa.binary()),
    })


def _init(runner: CliRunner, *args: str) -> None:
    result = runner.invoke(app, ["init", *args])
    assert result.exit_code == 0, result.output


def _said(result) -> str:
    return " ".join(result.output.split())  # rich wraps long lines


def _run(runner: CliRunner, spec_path, *extra: str) -> None:
    result = runner.invoke(app, ["run", str(spec_path), *FAST, *extra])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "arrow_type, kind",
    [(pa.string(), "categorical"), (pa.large_string(), "categorical"), (pa.dictionary(pa.int32(), pa.string()),
     "categorical"), (pa.int8(), "integer"), (pa.uint64(), "integer"), (pa.float32(), "float"),
     (pa.decimal128(10, 2), "float"), (pa.timestamp("ms", tz="UTC"), "datetime"), (pa.date32(), "datetime"),
     (pa.bool_(), "boolean"), (pa.list_(pa.int64()), None), (pa.struct([("a", pa.int64())]), None),
     (pa.binary(), None), (pa.time64("us"), None), (pa.duration("s"), None)],
)
def test_kind_of_arrow_type(arrow_type, kind):
    assert kind_of(arrow_type) == kind


@pytest.mark.slow
def test_init_parquet_reads_no_row_and_the_spec_runs(tmp_path, monkeypatch):
    source = tmp_path / "events.parquet"
    pq.write_table(_table(), source)
    spec_path = tmp_path / "spec.yaml"

    def no_rows(*args, **kwargs):
        raise AssertionError("dpbeam init read rows")

    with monkeypatch.context() as m:  # init may read the footer, never a row
        for attr in ("read", "read_row_group", "read_row_groups", "iter_batches"):
            m.setattr(pq.ParquetFile, attr, no_rows)
        m.setattr(pq, "read_table", no_rows)
        _init(CliRunner(), str(source), "--unit", "user_id", "--out", str(spec_path))

    text = spec_path.read_text()
    data = yaml.safe_load(text)
    assert data["privacy"] == {"unit": {"column": "user_id"}, "epsilon": 1.0, "delta": 1e-9,
                               "max_rows_per_unit": "auto", "discovery_fraction": 0.1}
    assert data["columns"] == {
        "city": {"kind": "categorical"}, "plan": {"kind": "categorical"}, "age": {"kind": "integer"},
        "income": {"kind": "float"}, "signup": {"kind": "datetime"}, "day": {"kind": "datetime"},
        "active": {"kind": "boolean"},
    }  # every domain open, no nullable (the schema's), the unit and the list/binary columns left out
    assert "#   tags: list<element: string>" in text and "#   blob: binary" in text
    assert data["source"]["uri"] == str(source.resolve()) and data["output"]["uri"] == "events-synthetic"

    _run(CliRunner(), spec_path)
    synth = pq.read_table(tmp_path / "events-synthetic")
    real_types = {f.name: f.type for f in _table(10).schema}
    assert synth.num_rows > 0
    for field in synth.schema:
        want = real_types[field.name]
        assert field.type == (want.value_type if pa.types.is_dictionary(want) else want), field.name
    assert set(synth.schema.names) == set(data["columns"])


@pytest.mark.slow
def test_init_csv_all_categorical_runs_and_set_kinds_run(tmp_path):
    rng = np.random.default_rng(1)
    n = 1500
    lines = ["city,age,income,joined,member"]
    for i in range(n):
        age = int(rng.integers(18, 80))
        income = "" if rng.random() < 0.1 else f"{age * 800 + rng.normal(0, 5000):.2f}"
        joined = dt.date(2024, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365)))
        lines.append(f"{rng.choice(['berlin', 'paris', 'rome'])},{age},{income},{joined},{str(age < 40).lower()}")
    source = tmp_path / "people.csv"
    source.write_text("\n".join(lines) + "\n")
    spec_path = tmp_path / "spec.yaml"
    runner = CliRunner()
    _init(runner, str(source), "--out", str(spec_path))
    text = spec_path.read_text()
    data = yaml.safe_load(text)
    assert data["privacy"]["unit"] == "row" and "max_rows_per_unit" not in data["privacy"]
    assert data["source"]["format"] == "csv"
    assert all(c == {"kind": "categorical"} for c in data["columns"].values())
    assert list(data["columns"]) == ["city", "age", "income", "joined", "member"]
    assert "CSV HAS NO TYPES" in text and text.count("# CSV: set the kind") == 5

    _run(runner, spec_path)  # as written: every column read and synthesized as text
    assert all(pa.types.is_string(t) for t in pq.read_table(tmp_path / "people-synthetic").schema.types)

    # as the comment says: set the kinds
    kinds = {"age": "integer", "income": "float", "joined": "datetime", "member": "boolean"}
    for col, kind in kinds.items():
        text = text.replace(f"  {col}: {{kind: categorical}}", f"  {col}: {{kind: {kind}}}")
    spec_path.write_text(text)
    assert {c: s.kind for c, s in load_spec(spec_path).columns.items()} == {"city": "categorical", **kinds}
    _run(runner, spec_path, "--overwrite")
    synth = pq.read_table(tmp_path / "people-synthetic")
    assert synth.schema.field("age").type == pa.int64() and synth.schema.field("income").type == pa.float64()
    assert synth.schema.field("joined").type == pa.timestamp("us") and synth.schema.field("member").type == pa.bool_()


def test_init_csv_never_parses_a_row(tmp_path):
    source = tmp_path / "odd.csv"
    source.write_text("a,b\n1,2,3,not,a,row\n\x00\x01")  # only the header is read
    assert list(yaml.safe_load(init_spec_text(str(source)))["columns"]) == ["a", "b"]


def test_init_errors(tmp_path):
    source = tmp_path / "t.parquet"
    pq.write_table(_table(20), source)
    runner = CliRunner()
    bad_unit = runner.invoke(app, ["init", str(source), "--unit", "uid", "--out", str(tmp_path / "s.yaml")])
    assert bad_unit.exit_code == 2 and "--unit 'uid' is not a column" in _said(bad_unit)
    (tmp_path / "s.yaml").write_text("mine")
    exists = runner.invoke(app, ["init", str(source), "--out", str(tmp_path / "s.yaml")])
    assert exists.exit_code == 2 and "already exists" in _said(exists)
    assert (tmp_path / "s.yaml").read_text() == "mine"
    _init(runner, str(source), "--out", str(tmp_path / "s.yaml"), "--overwrite")
    assert "columns:" in (tmp_path / "s.yaml").read_text()
    only_lists = tmp_path / "lists.parquet"
    pq.write_table(pa.table({"uid": [1, 2], "tags": [[1], [2]]}), only_lists)
    none = runner.invoke(app, ["init", str(only_lists), "--unit", "uid", "--out", str(tmp_path / "l.yaml")])
    assert none.exit_code == 2 and "no column" in _said(none)
    missing = runner.invoke(app, ["init", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "m.yaml")])
    assert missing.exit_code == 2 and "does not exist" in _said(missing)


def test_init_quotes_column_names_yaml_would_misread(tmp_path):
    source = tmp_path / "odd-names.csv"
    source.write_text('yes,123,"a: b",null,# x\n')
    data = yaml.safe_load(init_spec_text(str(source)))
    assert list(data["columns"]) == ["yes", "123", "a: b", "null", "# x"]
