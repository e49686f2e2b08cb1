"""The local engine: the trusted pass in this process, streaming Arrow batches from the source.

Row-level jobs summarize batch by batch and hold only the summary. Unit-level jobs hash-partition the prepared
batches (encoded codes and two unit-hash words per row, a few bytes a row) into buckets by unit, then bound and
summarize one bucket at a time, so sorting never touches more than one bucket.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import pyarrow as pa

from dpbeam.aggregate import Aggregation, bound_prepared, partition_of, prepare_with_units
from dpbeam.bounding import BoundingKey
from dpbeam.source import Source

S = TypeVar("S")
Advance = Callable[[int], None]
BUCKETS = 16


def run_aggregation(
    source: Source,
    aggregation: Aggregation[S],
    unit_column: str | None,
    k: int,
    key: BoundingKey,
    advance: Advance | None = None,
    **options: object,
) -> S:
    """The merged summary of ``aggregation`` over the bounded source table. The local engine takes no options."""
    if options:
        raise TypeError(f"the local engine takes no options; got {sorted(options)}")
    columns = aggregation.columns + ([unit_column] if unit_column else [])
    summary = aggregation.zero()
    buckets: list[list[pa.RecordBatch]] = [[] for _ in range(BUCKETS)]
    for batch in source.batches(columns):
        prepared = prepare_with_units(aggregation, batch, unit_column, key)
        # prepared: one row per source row; code columns (+ __unit_h1, __unit_h2 for unit-level jobs)
        if unit_column is None:
            summary = aggregation.merge(summary, aggregation.partial(prepared))
        else:
            part = partition_of(prepared, BUCKETS)
            for b in range(BUCKETS):
                rows = (part == b).nonzero()[0]
                if len(rows):
                    buckets[b].append(prepared.take(pa.array(rows)))
        if advance:
            advance(batch.num_rows)
    for b in range(BUCKETS):
        if buckets[b]:
            bucket = pa.Table.from_batches(buckets[b]).combine_chunks().to_batches()[0]
            buckets[b] = []
            # bucket: every row of the units hashed to b
            summary = aggregation.merge(summary, aggregation.partial(bound_prepared(aggregation, bucket, k, key)))
    return summary
