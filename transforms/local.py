"""The local engine: the trusted pass in this process, streaming Arrow batches from the source.

Row-level jobs summarize batch by batch and hold only the summary. Unit-level jobs hash-partition the prepared
batches (encoded codes and two unit-hash words per row, a few bytes a row) into buckets by unit, then bound and
summarize one bucket at a time, so sorting never touches more than one bucket.

Progress is counted in files of the source listing (public), never in rows.
"""

from __future__ import annotations

from typing import TypeVar

import pyarrow as pa

from dpbeam.aggregate import Aggregation, NullUnits, bound_prepared, one_batch, partition_of, prepare_with_units
from dpbeam.bounding import BoundingKey
from dpbeam.progress import Advance
from dpbeam.source import Source

S = TypeVar("S")
BUCKETS = 16


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
    buckets: list[list[pa.RecordBatch]] = [[] for _ in range(BUCKETS)]
    if advance:
        advance.set_total(len(source.files), "files")
    for path in source.files:
        for batch in source.split_batches((path, None), columns):
            prepared = prepare_with_units(aggregation, batch, unit_column, key, null_units)
            # prepared: one row per source row (rows with a null unit dropped); code columns (+ __unit_h1, __unit_h2)
            if unit_column is None:
                summary = aggregation.merge(summary, aggregation.partial(prepared))
            else:
                part = partition_of(prepared, BUCKETS)
                for b in range(BUCKETS):
                    rows = (part == b).nonzero()[0]
                    if len(rows):
                        buckets[b].append(prepared.take(pa.array(rows)))
        if advance:
            advance(1)
    for b in range(BUCKETS):
        if buckets[b]:
            bucket = one_batch(buckets[b])
            buckets[b] = []
            # bucket: every row of the units hashed to b
            summary = aggregation.merge(summary, aggregation.partial(bound_prepared(aggregation, bucket, k, key)))
    return summary
