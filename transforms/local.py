"""The local engine: the trusted pass in this process, streaming Arrow batches from the source.

Row-level jobs summarize batch by batch and hold only the summary. Unit-level jobs hash-partition the prepared
batches (encoded codes and two unit-hash words per row, a few bytes a row) into ``BUCKETS`` buckets by unit and spill
each bucket to its own Arrow IPC file in a private temporary directory (removed when the pass ends, also on error);
then they read back, bound and summarize one bucket at a time.

Memory is bounded by one source batch plus one bucket (about 1/``BUCKETS`` of the prepared rows: ~26 bytes a row for
10 columns, so ~4 MB at 10M rows) plus the summary; it does not hold the bounded table. Disk holds the prepared rows
once, in the temporary directory (the trusted side's local disk, as Beam's and Spark's shuffles do).

Progress is counted in files of the source listing (public), never in rows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterator, TypeVar

import numpy as np
import pyarrow as pa

from dpbeam.aggregate import Aggregation, NullUnits, bound_prepared, one_batch, partition_of, prepare_with_units
from dpbeam.bounding import BoundingKey
from dpbeam.progress import Advance
from dpbeam.source import Source

S = TypeVar("S")
BUCKETS = 64


class _Spill:
    """``BUCKETS`` append-only Arrow IPC streams in ``folder``, one per bucket, opened on their first batch."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        self.sinks: dict[int, pa.NativeFile] = {}

    def add(self, prepared: pa.RecordBatch, part: np.ndarray) -> None:
        """Append each row of ``prepared`` to the bucket ``part`` names for it."""
        order = np.argsort(part, kind="stable")
        grouped = prepared.take(pa.array(order))
        # grouped: the rows of prepared, bucket by bucket, in their order within each bucket
        bounds = np.searchsorted(part[order], np.arange(BUCKETS + 1))
        for b in range(BUCKETS):
            lo, hi = int(bounds[b]), int(bounds[b + 1])
            if hi > lo:
                self._writer(b, prepared.schema).write_batch(grouped.slice(lo, hi - lo))

    def _writer(self, b: int, schema: pa.Schema) -> pa.ipc.RecordBatchStreamWriter:
        if b not in self.writers:
            self.sinks[b] = pa.OSFile(str(self.folder / f"bucket-{b:03d}.arrows"), "wb")
            self.writers[b] = pa.ipc.new_stream(self.sinks[b], schema)
        return self.writers[b]

    def close(self) -> None:
        for b in list(self.writers):
            self.writers.pop(b).close()
            self.sinks.pop(b).close()

    def buckets(self) -> Iterator[list[pa.RecordBatch]]:
        """The pieces of each non-empty bucket, read back one bucket at a time (call after :meth:`close`)."""
        for b in range(BUCKETS):
            path = self.folder / f"bucket-{b:03d}.arrows"
            if path.exists():
                with pa.OSFile(str(path), "rb") as f:
                    pieces = list(pa.ipc.open_stream(f))
                path.unlink()
                yield pieces


def run_aggregation(
    source: Source,
    aggregation: Aggregation[S],
    unit_column: str | None,
    k: int,
    key: BoundingKey,
    advance: Advance | None = None,
    null_units: NullUnits = "drop",
    **options: object,
) -> S:
    """The merged summary of ``aggregation`` over the bounded source table. ``null_units``: what to do with rows whose
    unit is null (see :func:`dpbeam.aggregate.drop_null_units`). ``advance`` ticks once per source file read. The
    local engine takes no options."""
    if options:
        raise TypeError(f"the local engine takes no options; got {sorted(options)}")
    columns = aggregation.columns + ([unit_column] if unit_column else [])
    summary = aggregation.zero()
    if advance:
        advance.set_total(len(source.files), "files")
    with tempfile.TemporaryDirectory(prefix="dpbeam-shuffle-") as folder:
        spill = _Spill(folder)
        try:
            for path in source.files:
                for batch in source.split_batches((path, None), columns):
                    prepared = prepare_with_units(aggregation, batch, unit_column, key, null_units)
                    # prepared: one row per source row (null units dropped); code columns (+ __unit_h1, __unit_h2)
                    if unit_column is None:
                        summary = aggregation.merge(summary, aggregation.partial(prepared))
                    else:
                        spill.add(prepared, partition_of(prepared, BUCKETS))
                if advance:
                    advance(1)
        finally:
            spill.close()
        for pieces in spill.buckets():
            bucket = one_batch(pieces)
            # bucket: every row of the units hashed to one bucket
            summary = aggregation.merge(summary, aggregation.partial(bound_prepared(aggregation, bucket, k, key)))
    return summary
