"""The local engine: the whole trusted pass in this process, streaming Arrow batches from the source.

Row-level jobs count batch by batch and hold only the cubes. Unit-level jobs hold the encoded codes (a few bytes a
row) and two hash words per row until every row of every unit has been seen, then bound and count.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from dpbeam.bounding import BoundingKey, bound_rows, unit_hashes
from dpbeam.domain import TableDomain
from dpbeam.encode import encode_batch
from dpbeam.marginals import Clique, count_cliques, empty_cubes, merge_cubes
from dpbeam.source import Source

Advance = Callable[[int], None]


def _encoded(source: Source, domain: TableDomain, unit_column: str | None, advance: Advance | None):
    columns = domain.names + ([unit_column] if unit_column else [])
    for batch in source.batches(columns):
        codes = encode_batch(batch, domain)
        units = batch.column(unit_column) if unit_column else None
        yield codes, units
        if advance:
            advance(batch.num_rows)


def bounded_codes(
    source: Source, domain: TableDomain, unit_column: str | None, k: int, key: BoundingKey,
    advance: Advance | None = None,
) -> np.ndarray:
    """The code matrix of the rows kept after bounding (every row for row-level jobs)."""
    parts, h1s, h2s = [], [], []
    for codes, units in _encoded(source, domain, unit_column, advance):
        parts.append(codes)
        if units is not None:
            h1, h2 = unit_hashes(units, key)
            h1s.append(h1)
            h2s.append(h2)
    codes = np.concatenate(parts) if parts else np.zeros((0, len(domain.columns)), domain.code_dtype())
    if unit_column is None:
        return codes
    keep = bound_rows(np.concatenate(h1s), np.concatenate(h2s), codes, k, key)
    return codes[keep]


def exact_cubes(
    source: Source, domain: TableDomain, unit_column: str | None, k: int, cliques: Sequence[Clique],
    key: BoundingKey, advance: Advance | None = None,
) -> dict[Clique, np.ndarray]:
    """Exact cubes of ``cliques`` over the bounded table. These never leave the trusted side."""
    if unit_column is not None:
        return count_cliques(bounded_codes(source, domain, unit_column, k, key, advance), domain, cliques)
    cubes = empty_cubes(domain, cliques)
    for codes, _ in _encoded(source, domain, None, advance):
        cubes = merge_cubes(cubes, count_cliques(codes, domain, cliques))
    return cubes
