"""The guardrail: no column of an output is a copy or a permutation of a real column.

DPDSyn as printed releases the real feature columns shuffled; every value (and the multiset of each column) is real,
which no DP mechanism would output. :func:`copied_columns` finds such columns: a synthetic column is flagged when its
multiset of values equals the real column's (a permutation; same length), or when it equals the real column row by
row on a prefix of MIN_COPY_ROWS rows or more. It compares with the real data, so its result is not DP: it is for
tests and for the data owner, never part of a release.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MIN_COPY_ROWS = 100


def _sorted(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return pc.take(col, pc.array_sort_indices(col, null_placement="at_end"))


def is_permutation(real: pa.ChunkedArray | pa.Array, synth: pa.ChunkedArray | pa.Array) -> bool:
    """Whether ``synth`` holds exactly the values of ``real`` (with multiplicity), in any order."""
    if len(real) != len(synth):
        return False
    a, b = _sorted(real), _sorted(synth.cast(real.type) if synth.type != real.type else synth)
    return bool(a.equals(b))


def is_copy(real: pa.ChunkedArray | pa.Array, synth: pa.ChunkedArray | pa.Array) -> bool:
    """Whether ``synth`` equals ``real`` row by row on its first ``min(len)`` rows (at least MIN_COPY_ROWS)."""
    n = min(len(real), len(synth))
    if n < MIN_COPY_ROWS:
        return False
    a = real.slice(0, n)
    b = synth.slice(0, n)
    b = b.cast(a.type) if b.type != a.type else b
    return bool(np.all(pc.fill_null(pc.equal(a, b), False).to_numpy(zero_copy_only=False)))


def copied_columns(real: pa.Table, synth: pa.Table) -> list[str]:
    """The columns of ``synth`` that are a permutation or a copy of ``real``'s column of the same name."""
    out = []
    for name in synth.column_names:
        if name in real.column_names:
            r, s = real.column(name), synth.column(name)
            if is_permutation(r, s) or is_copy(r, s):
                out.append(name)
    return out
