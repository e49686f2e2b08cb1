"""The Parquet writer streams: it holds at most one row group of rows, and files and row groups come out full."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dpbeam import lake

SCHEMA = pa.schema([pa.field("color", pa.string(), nullable=False), pa.field("age", pa.int64(), nullable=False)])


def _table(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"color": rng.choice(["red", "green", "blue"], rows), "age": rng.integers(18, 80, rows)},
                    schema=SCHEMA)


def test_writer_holds_at_most_one_row_group_and_writes_full_files(tmp_path):
    tables = [_table(250, s) for s in range(3)]
    with lake.atomic_directory(str(tmp_path / "out")) as tmp:
        w = lake.DatasetWriter(tmp, SCHEMA, max_rows_per_file=300, row_group_rows=100)
        for t in tables:
            w.write(t)
            assert w._buffered < 100  # whole row groups went to disk as they came
        w.close()
    files = sorted(p for p in (tmp_path / "out").iterdir() if p.name.startswith("part-"))
    metas = [pq.ParquetFile(f).metadata for f in files]
    assert [m.num_rows for m in metas] == [300, 300, 150]
    assert [m.row_group(i).num_rows for m in metas for i in range(m.num_row_groups)] == [100] * 7 + [50]
    got = pa.concat_tables([pq.read_table(f) for f in files])
    assert got.equals(pa.concat_tables(tables))  # every row, in order
