"""Issue 7, findings 2, 4, 7 and 11: types never come from values, data checks that can fail run before the first
noise draw, every domain that measurement accepts can be written out, and discovery keeps units apart."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import small_spec
from dpbeam.bounding import BoundingKey
from dpbeam.discovery import DiscoveryStats, DiscoveryTask, RowsPerUnit
from dpbeam.errors import SourceError
from dpbeam.job import discover, plan_job, run_job
from dpbeam.privacy.accountant import ZCDPAccountant
from dpbeam.progress import Reporter
from dpbeam.spec import parse_spec


def _csv(path, rows: list[str]) -> str:
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def _csv_spec(src: str, out: str) -> dict:
    return {
        "source": {"uri": src},
        "privacy": {"epsilon": 1.0, "delta": 1e-6},
        "columns": {"n": {"kind": "integer", "bounds": [0, 9]}, "d": {"kind": "datetime", "bounds":
                    ["2024-01-01", "2024-12-31"], "bins": 4}, "c": {"kind": "categorical", "values": ["a", "b"]}},
        "output": {"uri": out},
    }


def test_csv_types_come_from_the_spec_not_the_values(tmp_path):
    # The first rows look like int64 / date / int to Arrow's inference; one more row would turn n into double and d
    # into string. The schema must be the spec's either way, and the same for both tables.
    rows = ["n,d,c,extra"] + [f"{i % 10},2024-0{1 + i % 9}-01,{'ab'[i % 2]},{i}" for i in range(50)]
    a = _csv(tmp_path / "a.csv", rows)
    b = _csv(tmp_path / "b.csv", rows + ["2.5,not-a-date,7,x"])
    schemas = [plan_job(parse_spec(_csv_spec(src, str(tmp_path / f"out{i}")))).source.schema
               for i, src in enumerate((a, b))]
    assert schemas[0] == schemas[1]
    s = schemas[0]
    assert s.field("n").type == pa.int64() and s.field("d").type == pa.timestamp("us")
    assert s.field("c").type == pa.string() and s.field("extra").type == pa.string()


def test_csv_arrow_type_override(tmp_path):
    src = _csv(tmp_path / "a.csv", ["n,d,c", "1,2024-01-01,a"])
    spec = _csv_spec(src, str(tmp_path / "out"))
    spec["columns"]["n"]["arrow_type"] = "int16"
    spec["columns"]["d"]["arrow_type"] = "date32"
    plan = plan_job(parse_spec(spec))
    assert plan.source.schema.field("n").type == pa.int16()
    assert plan.domain["d"].arrow_type == "date32"


def test_nullable_follows_the_schema(tmp_path):
    path = tmp_path / "t.parquet"
    schema = pa.schema([pa.field("a", pa.string(), nullable=True), pa.field("b", pa.string(), nullable=False)])
    pq.write_table(pa.table({"a": ["x", None], "b": ["x", "y"]}, schema=schema), path)
    spec = {"source": {"uri": str(path)}, "privacy": {"epsilon": 1.0, "delta": 1e-6},
            "columns": {"a": {"kind": "categorical", "values": ["x"]}, "b": {"kind": "categorical", "values": ["x"]}},
            "output": {"uri": str(tmp_path / "out")}}
    dom = plan_job(parse_spec(spec)).domain
    assert dom["a"].nullable and not dom["b"].nullable


class _ChargeSpy:
    def __init__(self, monkeypatch):
        self.charges = 0
        original = ZCDPAccountant.charge

        def charge(acc, *args, **kwargs):
            self.charges += 1
            return original(acc, *args, **kwargs)

        monkeypatch.setattr(ZCDPAccountant, "charge", charge)


@pytest.mark.parametrize("open_domain", [False, True])
def test_null_in_a_non_nullable_column_stops_before_any_noise(tmp_path, monkeypatch, open_domain):
    # The null sits in a column that the discovery passes would not otherwise read: the first pass must still
    # read and check it, so that the job stops before its first noise draw (no charge was made).
    n = 400
    rng = np.random.default_rng(0)
    color = rng.choice(["red", "green"], n).astype(object)
    color[123] = None
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"user_id": rng.integers(0, 50, n), "color": pa.array(color, pa.string()),
                             "age": rng.integers(18, 80, n)}), path)
    spec = {"source": {"uri": str(path)},
            "privacy": {"unit": {"column": "user_id"}, "epsilon": 1.0, "delta": 1e-6,
                        "max_rows_per_unit": "auto", "discovery_fraction": 0.2},
            "columns": {"color": {"kind": "categorical", "values": ["red", "green"], "nullable": False},
                        "age": {"kind": "integer", **({} if open_domain else {"bounds": [18, 79]})}},
            "output": {"uri": str(tmp_path / "out")}}
    spy = _ChargeSpy(monkeypatch)
    with pytest.raises(SourceError, match="color"):
        run_job(parse_spec(spec))
    assert spy.charges == 0


def test_unparseable_csv_value_stops_before_any_noise(tmp_path, monkeypatch):
    rows = ["user_id,n,c"] + [f"u{i % 40},{i % 10},{'ab'[i % 2]}" for i in range(300)]
    rows[200] = "u7,SSN-123-45-6789,a"
    src = _csv(tmp_path / "a.csv", rows)
    spec = _csv_spec(src, str(tmp_path / "out"))
    spec["columns"] = {"n": {"kind": "integer", "bounds": [0, 9]}, "c": {"kind": "categorical"}}
    spec["privacy"].update(unit={"column": "user_id"}, max_rows_per_unit="auto", discovery_fraction=0.2)
    spy = _ChargeSpy(monkeypatch)
    with pytest.raises(Exception) as info:
        run_job(parse_spec(spec))
    assert spy.charges == 0
    assert not (tmp_path / "out").exists()
    del info


def test_csv_times_with_an_offset_say_which_arrow_type_reads_them(tmp_path):
    """A CSV export of UTC times ("2013-01-01 06:00:00+00:00", as pandas writes them) does not parse as the default
    timestamp[us]: the error names the column and its type, quotes no value, and says which arrow_type reads it;
    with that arrow_type the job runs and writes the column back in it."""
    rows = ["n,d,c"] + [f"{i % 10},2024-0{1 + i % 9}-1{i % 10} 0{i % 10}:00:00+00:00,{'ab'[i % 2]}" for i in range(300)]
    src = _csv(tmp_path / "a.csv", rows)
    spec = _csv_spec(src, str(tmp_path / "out"))
    with pytest.raises(SourceError) as info:
        run_job(parse_spec(spec))
    msg = str(info.value)
    assert "column 'd'" in msg and "(timestamp[us])" in msg and 'arrow_type: "timestamp[us, tz=UTC]"' in msg
    assert "2024-0" not in msg
    spec["columns"]["d"]["arrow_type"] = "timestamp[us, tz=UTC]"
    run_job(parse_spec(spec))
    assert pq.read_table(tmp_path / "out").schema.field("d").type == pa.timestamp("us", tz="UTC")


def test_integer_coded_categorical_left_open_synthesizes(tmp_path):
    # A panel table's integer-coded race column, nullable in the schema, left open: synthesis wrote the "other"
    # code as null into a non-nullable field and crashed after the measurements were written.
    n = 3000
    rng = np.random.default_rng(1)
    schema = pa.schema([pa.field("race", pa.int64(), nullable=False), pa.field("x", pa.int64(), nullable=False)])
    race = rng.choice([1, 2, 3, 4, 5, 6, 7], n, p=[0.4, 0.3, 0.15, 0.1, 0.03, 0.015, 0.005])
    pq.write_table(pa.table({"race": race, "x": rng.integers(0, 5, n)}, schema=schema), tmp_path / "t.parquet")
    spec = {"source": {"uri": str(tmp_path / "t.parquet")},
            "privacy": {"epsilon": 1.0, "delta": 1e-6, "discovery_fraction": 0.3},
            "columns": {"race": {"kind": "categorical"}, "x": {"kind": "integer", "bounds": [0, 4]}},
            "synthesizer": {"iters": 50}, "output": {"uri": str(tmp_path / "out")}}
    run_job(parse_spec(spec))
    out = pq.read_table(tmp_path / "out")
    assert out.schema.field("race").type == pa.int64() and out.column("race").null_count == 0
    assert set(out.column("race").to_pylist()) <= {1, 2, 3, 4, 5, 6, 7, -1}


def test_other_label_that_the_type_cannot_hold_is_refused_before_data(tmp_path, small_parquet):
    spec = small_spec(small_parquet, str(tmp_path / "out"), discovery_fraction=0.2)
    spec["columns"] = {"age": {"kind": "categorical", "other_label": "none of these"}}
    with pytest.raises(Exception, match="other_label"):
        plan_job(parse_spec(spec))


def test_discovered_datetime_over_a_century_and_narrow_integers_build_their_domains(tmp_path):
    # Dates spread over 1906-2020 used to get day granularity (over 4096 bins: an error after the discovery budget
    # was spent); an integer column with 8 values and bins: 50 used to fail the same way.
    n = 4000
    rng = np.random.default_rng(3)
    when = np.datetime64("1906-01-01", "D") + rng.integers(0, 114 * 365, n).astype("timedelta64[D]")
    pq.write_table(pa.table({"t": pa.array(when.astype("datetime64[us]")), "n": rng.integers(3, 11, n)}),
                   tmp_path / "t.parquet")
    spec = parse_spec({"source": {"uri": str(tmp_path / "t.parquet")},
                       "privacy": {"epsilon": 8.0, "delta": 1e-6, "discovery_fraction": 0.5},
                       "columns": {"t": {"kind": "datetime"}, "n": {"kind": "integer", "bins": 50}},
                       "output": {"uri": str(tmp_path / "out")}})
    plan = discover(plan_job(spec), "local", BoundingKey(b"k" * 32), Reporter())
    from dpbeam.job import DISCOVERED_BINS

    assert 2 <= len(plan.domain["t"].edges) <= DISCOVERED_BINS + 1  # at most that many equal-frequency bins
    assert plan.domain["n"].edges == tuple(range(3, 12))  # one bin per value 3..10


def test_listed_bin_edges_are_bounds():
    spec = parse_spec({"source": {"uri": "x.parquet"}, "privacy": {"epsilon": 1, "delta": 1e-6},
                       "columns": {"n": {"kind": "integer", "bins": [0, 10, 20]},
                                   "f": {"kind": "float", "bins": [0.0, 0.5, 2.0]}},
                       "output": {"uri": "o"}})
    assert spec.columns["n"].bounds == (0, 19) and spec.columns["f"].bounds == (0.0, 2.0)


def _prepared_with_units(h1: list[int], h2: list[int], values: list[str]) -> pa.RecordBatch:
    return pa.record_batch({"c": pa.array(values), "__unit_h1": pa.array(h1, pa.uint64()),
                            "__unit_h2": pa.array(h2, pa.uint64())})


def test_discovery_keeps_both_words_of_the_unit_hash():
    # Two units whose 128-bit hashes share a word (and would fold to one 64-bit id if the words were mixed into
    # one) stay two units: each adds 1 to a value's distinct-unit count, and the rows-per-unit histogram sees two.
    from dpbeam.bounding import mix64

    a1, a2 = np.uint64(5), np.uint64(9)
    # b is chosen so that mix64(b1 ^ mix64(b2)) == mix64(a1 ^ mix64(a2)): the old fold merged a and b
    b2 = np.uint64(77)
    b1 = a1 ^ mix64(np.array([a2]))[0] ^ mix64(np.array([b2]))[0]
    batch = _prepared_with_units([int(a1), int(b1)], [int(a2), int(b2)], ["x", "x"])
    stats = DiscoveryStats([DiscoveryTask("c", "categorical")]).partial(batch)
    assert stats["c"]["x"] == 2
    hist = RowsPerUnit().partial(batch)
    assert hist.sum() == 2


def test_auto_k_on_a_single_column_table(tmp_path):
    # one column: the plan has no 2-way measurement stage; the k rule uses the 1-way marginal's noise instead
    rng = np.random.default_rng(5)
    pq.write_table(pa.table({"u": rng.integers(0, 300, 3000), "c": rng.choice(["a", "b"], 3000)}), tmp_path / "t.pq")
    spec = parse_spec({"source": {"uri": str(tmp_path / "t.pq")},
                       "privacy": {"unit": {"column": "u"}, "epsilon": 4.0, "delta": 1e-6, "max_rows_per_unit": "auto",
                                   "discovery_fraction": 0.2},
                       "columns": {"c": {"kind": "categorical", "values": ["a", "b"]}},
                       "output": {"uri": str(tmp_path / "out")}})
    plan = discover(plan_job(spec), "local", BoundingKey(b"s" * 32), Reporter())
    assert plan.k >= 1 and 0 < plan.expected_rows_kept <= 1
