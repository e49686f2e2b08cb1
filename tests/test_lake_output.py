"""Lake output: a Parquet dataset with file and row-group sizing, hive partitions, atomic visibility on local disk and
on an fsspec object store (memory:// stands in for gs:// and s3://), the statement and README beside the data, and
Iceberg/Delta registration where each release is a new snapshot/version and the old one stays readable."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpbeam import lake
from dpbeam.errors import OutputExistsError
from dpbeam.spec import TableSpec

SCHEMA = pa.schema([pa.field("color", pa.string(), nullable=False), pa.field("age", pa.int64(), nullable=False)])


def chunks(n_chunks: int = 3, rows: int = 250, seed: int = 0) -> list[pa.Table]:
    rng = np.random.default_rng(seed)
    return [pa.table({"color": rng.choice(["red", "green", "blue"], rows), "age": rng.integers(18, 80, rows)},
                     schema=SCHEMA) for _ in range(n_chunks)]


def write(uri: str, tables: list[pa.Table], statement: dict, **layout) -> None:
    with lake.atomic_directory(uri, overwrite=True) as tmp:
        w = lake.DatasetWriter(tmp, SCHEMA, **layout)
        for t in tables:
            w.write(t)
        w.close()
        lake.write_release(tmp, statement)


STATEMENT = {"statement": "the promise text", "privacy_unit": "column user_id", "epsilon": 1.0, "delta": 1e-6,
             "rho": 0.02, "spec_sha256": "a" * 64, "lineage": {"ledger_entry": "e1"},
             "stages": {"one_way": {"fraction": 0.5, "rho_allotted": 0.01}}}


def test_file_and_row_group_sizing(tmp_path):
    uri = str(tmp_path / "out")
    write(uri, chunks(), STATEMENT, max_rows_per_file=300, row_group_rows=100)
    files = sorted(p for p in (tmp_path / "out").iterdir() if p.name.startswith("part-"))
    metas = [pq.ParquetFile(f).metadata for f in files]
    assert sum(m.num_rows for m in metas) == 750
    assert all(m.num_rows <= 300 for m in metas)
    assert all(m.row_group(i).num_rows <= 100 for m in metas for i in range(m.num_row_groups))
    assert pq.read_table(uri).num_rows == 750  # the statement and README do not disturb readers
    assert json.loads((tmp_path / "out" / "_release.json").read_text()) == STATEMENT
    readme = (tmp_path / "out" / lake.README).read_text()
    assert "> the promise text" in readme and "e1" in readme and "one_way" in readme


def test_hive_partitions_read_back(tmp_path):
    uri = str(tmp_path / "out")
    tables = chunks()
    write(uri, tables, STATEMENT, partition_by="color")
    assert {p.name for p in (tmp_path / "out").iterdir() if p.is_dir()} == {"color=red", "color=green", "color=blue"}
    got = lake.read_dataset(uri, "color", SCHEMA).to_table().select(["color", "age"])
    want = pa.concat_tables(tables)
    assert sorted(zip(*got.to_pydict().values())) == sorted(zip(*want.to_pydict().values()))


def test_object_store_commit_is_atomic():
    uri = f"memory://lake-{uuid.uuid4().hex}/synthetic"
    fs, path = lake.filesystem(uri)
    with pytest.raises(RuntimeError):
        with lake.atomic_directory(uri) as tmp:
            w = lake.DatasetWriter(tmp, SCHEMA, max_rows_per_file=100)
            w.write(chunks(1)[0])  # files exist under the temporary prefix ...
            assert fs.find(lake.filesystem(tmp)[1])
            raise RuntimeError("crash")
    assert not fs.exists(path) and fs.ls(path.rsplit("/", 1)[0]) == []  # ... and nothing is left of them
    write(uri, chunks(), STATEMENT, max_rows_per_file=200)
    assert fs.exists(f"{path}/_SUCCESS")
    assert lake.read_dataset(uri).count_rows() == 750
    with pytest.raises(OutputExistsError):
        with lake.atomic_directory(uri):
            pass


def test_read_refuses_uncommitted(tmp_path):
    (tmp_path / "half").mkdir()
    pq.write_table(chunks(1)[0], tmp_path / "half" / "part-0.parquet")
    with pytest.raises(FileNotFoundError, match="no _SUCCESS"):
        lake.read_dataset(str(tmp_path / "half"))


@pytest.mark.parametrize("fmt", ["iceberg", "delta"])
def test_registration_new_release_new_snapshot(tmp_path, fmt):
    if fmt == "iceberg":
        table = TableSpec(format="iceberg", catalog_uri=f"sqlite:///{tmp_path}/catalog.db",
                          warehouse=f"file://{tmp_path}/warehouse", identifier="dp.users")
    else:
        table = TableSpec(format="delta", location=str(tmp_path / "users.delta"))
    uri = str(tmp_path / "out")
    write(uri, chunks(seed=1), STATEMENT)
    first = lake.register_table(table, uri, STATEMENT)
    second_statement = {**STATEMENT, "lineage": {"ledger_entry": "e2"}}
    write(uri, chunks(2, seed=2), second_statement)
    second = lake.register_table(table, uri, second_statement)
    if fmt == "iceberg":
        from pyiceberg.catalog.sql import SqlCatalog

        tbl = SqlCatalog("dpbeam", uri=table.catalog_uri, warehouse=table.warehouse).load_table(table.identifier)
        assert tbl.current_snapshot().snapshot_id == second["snapshot_id"] != first["snapshot_id"]
        assert tbl.scan().to_arrow().num_rows == 500
        assert tbl.scan(snapshot_id=first["snapshot_id"]).to_arrow().num_rows == 750
        props = tbl.properties
        assert tbl.current_snapshot().summary["dpbeam.ledger_entry"] == "e2"
    else:
        from deltalake import DeltaTable

        dt = DeltaTable(table.location)
        assert dt.version() == second["version"] > first["version"]
        assert dt.to_pyarrow_table().num_rows == 500
        assert DeltaTable(table.location, version=first["version"]).to_pyarrow_table().num_rows == 750
        props = dt.metadata().configuration
        assert dt.history(2)[1]["dpbeam.ledger_entry"] == "e2"  # the data's own commit carries the statement
    assert json.loads(props["dpbeam.release"]) == second_statement and props["dpbeam.ledger_entry"] == "e2"
