"""No row is ever dropped when the pieces of a shuffle partition are put together (finding 5 of issue 7).

Arrow's ``Table.combine_chunks`` leaves a string or binary column in several chunks once it passes the 2 GiB offset
limit, and ``combine_chunks().to_batches()[0]`` then kept only the first chunk's rows. A 2 GiB table is too slow for
the suite, so :class:`_SplittingArrow` stands in for pyarrow in the engine modules with exactly that behaviour:
``combine_chunks`` returns the table in two chunks. Every engine must still count every row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import small_spec, small_table
from dpbeam.aggregate import BoundedCodes, one_batch, prepare_with_units
from dpbeam.bounding import BoundingKey
from dpbeam.job import plan_job
from dpbeam.spec import parse_spec
from transforms import local

KEY = BoundingKey(b"one-batch-test-key-0123456789abc")
K = 3


class _TableMeta(type):
    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, pa.Table)


class _SplittingTable(metaclass=_TableMeta):
    """``pa.Table`` whose ``combine_chunks`` leaves two chunks, as Arrow does for a string column past 2 GiB."""

    @staticmethod
    def from_batches(batches, schema=None):
        return _Splitting(pa.Table.from_batches(batches, schema=schema))


class _Splitting:
    def __init__(self, table: pa.Table):
        self._table = table

    def combine_chunks(self) -> pa.Table:
        t = self._table.combine_chunks()
        half = t.num_rows // 2
        return pa.Table.from_batches(t.slice(0, half).to_batches() + t.slice(half).to_batches(), schema=t.schema)

    def __getattr__(self, name: str):
        return getattr(self._table, name)


class _SplittingArrow:
    """pyarrow, but with :class:`_SplittingTable` as ``Table``."""

    Table = _SplittingTable

    def __getattr__(self, name: str):
        return getattr(pa, name)


def test_the_stand_in_splits_like_arrow_past_2_gib():
    t = _SplittingArrow().Table.from_batches([pa.record_batch({"x": [1, 2, 3, 4]})])
    assert len(t.combine_chunks().to_batches()) == 2  # so `.to_batches()[0]` would lose rows 3 and 4


def test_one_batch_keeps_every_row_and_widens_strings():
    parts = [
        pa.record_batch({"s": pa.array([f"v{i}" for i in range(n)]), "b": pa.array([b"x"] * n), "i": np.arange(n)})
        for n in (5, 0, 7, 1)
    ]
    out = one_batch(parts)
    assert out.num_rows == 13
    assert out.schema.field("s").type == pa.large_string() and out.schema.field("b").type == pa.large_binary()
    assert out.column("i").to_pylist() == list(range(5)) + list(range(7)) + [0]
    assert out.column("s").to_pylist()[:6] == ["v0", "v1", "v2", "v3", "v4", "v0"]
    empty = one_batch([], parts[0].schema)
    assert empty.num_rows == 0 and empty.schema.names == ["s", "b", "i"]


def _plan(source: str, tmp_path):
    spec = small_spec(source, str(tmp_path / "out"), unit={"column": "user_id"}, max_rows_per_unit=K)
    return plan_job(parse_spec(spec), check_outputs=False)


@pytest.fixture
def source(tmp_path) -> tuple[str, int]:
    """A unit-level table in four files, and the number of rows bounding keeps: sum over units of min(rows, k)."""
    table = small_table(n=2000, seed=21, units=150)
    d = tmp_path / "src"
    d.mkdir()
    for i in range(4):
        pq.write_table(table.slice(500 * i, 500), d / f"part-{i}.parquet")
    per_unit = np.unique(table.column("user_id").to_numpy(), return_counts=True)[1]
    return str(d), int(np.minimum(per_unit, K).sum())


def test_local_engine_keeps_every_row(source, tmp_path, monkeypatch):
    path, kept = source
    plan = _plan(path, tmp_path)
    monkeypatch.setattr(local, "pa", _SplittingArrow())
    got = local.run_aggregation(plan.source, BoundedCodes(plan.domain), "user_id", K, KEY)
    assert len(got) == kept


def test_beam_engine_keeps_every_row(source, tmp_path, monkeypatch):
    pytest.importorskip("apache_beam")
    from transforms import beam as beam_engine

    path, kept = source
    plan = _plan(path, tmp_path)
    monkeypatch.setattr(beam_engine, "pa", _SplittingArrow())  # the FnApiRunner runs the DoFns in this process
    got = beam_engine.run_aggregation(plan.source, BoundedCodes(plan.domain), "user_id", K, KEY, partitions=2,
                                      runner="FnApiRunner")
    assert len(got) == kept


def test_spark_bounding_functions_keep_every_row(source, tmp_path, monkeypatch):
    """Both Spark paths' bounding functions, run in this process on the pieces of one shuffle partition."""
    pytest.importorskip("pyspark")
    from transforms import spark as spark_engine

    path, kept = source
    plan = _plan(path, tmp_path)
    agg = BoundedCodes(plan.domain)
    columns = plan.columns + ["user_id"]
    pieces = [prepare_with_units(agg, b, "user_id", KEY) for b in plan.source.batches(columns, batch_rows=300)]
    monkeypatch.setattr(spark_engine, "pa", _SplittingArrow())
    # file path: (partition id, prepared batch) pieces -> one summary
    (summary,) = list(spark_engine.bound_pieces_fn(agg, K, KEY)(iter([(0, p) for p in pieces])))
    assert len(summary) == kept
    # catalog path: wire-typed prepared batches -> one pickled summary
    import pickle

    wire = [spark_engine.to_wire(p) for p in pieces]
    (row,) = list(spark_engine.bound_units_fn(agg, pieces[0].schema, K, KEY)(iter(wire)))
    assert len(pickle.loads(row.column(0)[0].as_py())) == kept
