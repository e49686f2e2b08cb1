"""The local engine's shuffle spills to a temporary directory: the result does not depend on the number of buckets,
and nothing of the spill is left behind, after a pass or after an error."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import transforms.local as local
from dpbeam.aggregate import BoundedCodes
from dpbeam.bounding import BoundingKey
from dpbeam.domain import CategoricalDomain, TableDomain
from dpbeam.errors import SourceError
from dpbeam.source import Source
from dpbeam.spec import SourceSpec

KEY = BoundingKey(b"k" * 32)


def _source(tmp_path, null_unit: bool = False) -> Source:
    rng = np.random.default_rng(0)
    n = 3000
    units = [f"u{i}" for i in rng.integers(0, 400, n)]
    if null_unit:
        units[1234] = None
    for i in range(3):
        sl = slice(i * n // 3, (i + 1) * n // 3)
        pq.write_table(pa.table({"user_id": units[sl], "color": rng.choice(["r", "g", "b"], n // 3),
                                 "age": rng.integers(0, 50, n // 3)}), tmp_path / f"part-{i}.parquet")
    return Source(SourceSpec(uri=str(tmp_path)))


def _domain() -> TableDomain:
    return TableDomain((CategoricalDomain(name="color", arrow_type="string", nullable=False, values=("r", "g", "b")),
                        CategoricalDomain(name="age", arrow_type="int64", nullable=False, values=tuple(range(50)))))


@pytest.mark.parametrize("buckets", [1, 7])
def test_result_does_not_depend_on_buckets(tmp_path, monkeypatch, buckets):
    (tmp_path / "src").mkdir()
    source = _source(tmp_path / "src")
    agg = BoundedCodes(_domain())
    want = local.run_aggregation(source, agg, "user_id", 2, KEY)
    monkeypatch.setattr(local, "BUCKETS", buckets)
    got = local.run_aggregation(source, agg, "user_id", 2, KEY)
    np.testing.assert_array_equal(got, want)
    assert 0 < len(got) <= 2 * 400  # k = 2 rows for each of at most 400 units


@pytest.mark.parametrize("null_unit", [False, True])
def test_spill_directory_is_removed(tmp_path, monkeypatch, null_unit):
    (tmp_path / "src").mkdir()
    (tmp_path / "tmp").mkdir()
    source = _source(tmp_path / "src", null_unit=null_unit)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    agg = BoundedCodes(_domain())
    if null_unit:  # the job refuses null units in its first pass: an error mid-pass, after spilling began
        with pytest.raises(SourceError):
            local.run_aggregation(source, agg, "user_id", 2, KEY, null_units="error")
    else:
        local.run_aggregation(source, agg, "user_id", 2, KEY)
    assert list((tmp_path / "tmp").iterdir()) == []
