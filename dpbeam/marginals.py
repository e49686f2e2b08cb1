"""Exact marginal counting: many cliques over one code matrix in one pass; partial cubes merge by addition.

A clique is a tuple of column names; its cube is an int64 array of shape ``[size(c) for c in clique]``. Counting is
``bincount`` over the raveled index of the clique's columns. Partial cubes from batches, workers or engines add up
to the cube of their union, which is what lets Beam's CombineFn and Spark's treeReduce do the work.

Sensitivity (stated here, used by :mod:`dpbeam.privacy.noise`): after bounding to at most k rows per unit, adding
or removing one unit changes a cube by at most k in L1 norm and at most k in L2 norm (the worst case puts all k rows
in one cell, giving an L2 change of k; spreading them gives sqrt(k) or less).
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Iterable, Mapping, Sequence

import numpy as np

from dpbeam.domain import TableDomain

Clique = tuple[str, ...]


def all_cliques(names: Sequence[str], order: int) -> list[Clique]:
    """Every clique of exactly ``order`` columns, in column order."""
    return list(combinations(names, order))


def count_cliques(
    codes: np.ndarray, domain: TableDomain, cliques: Iterable[Clique], weights: np.ndarray | None = None
) -> dict[Clique, np.ndarray]:
    """Exact cubes of ``cliques`` over a code matrix (rows, columns in domain order).

    Each row adds 1 (or its weight) to one cell of each cube. The raveled index is computed in int32 when the cube
    has fewer than 2^31 cells (every 2-way cube of a wide table): half the memory traffic of int64, which is what a
    pass over all d (d - 1) / 2 pairs is made of (1.15x to 1.4x faster on 40-100 columns, loaded 2-core machine).
    """
    sizes = domain.sizes
    out: dict[Clique, np.ndarray] = {}
    cols: dict[tuple[int, type], np.ndarray] = {}

    def col(j: int, dtype: type) -> np.ndarray:
        if (j, dtype) not in cols:
            cols[(j, dtype)] = codes[:, j].astype(dtype)
        return cols[(j, dtype)]

    for clique in cliques:
        idx = [domain.index(c) for c in clique]
        shape = tuple(sizes[j] for j in idx)
        cells = math.prod(shape)
        dtype = np.int32 if cells < 2**31 else np.int64
        flat = col(idx[0], dtype)
        for j in idx[1:]:
            flat = flat * dtype(sizes[j])
            flat += col(j, dtype)
        counts = np.bincount(flat, weights=weights, minlength=cells)
        out[clique] = (counts if weights is not None else counts.astype(np.int64)).reshape(shape)
    return out


def merge_cubes(a: Mapping[Clique, np.ndarray], b: Mapping[Clique, np.ndarray]) -> dict[Clique, np.ndarray]:
    """The cubes of the union of two inputs: cellwise sums, clique by clique."""
    if not a:
        return dict(b)
    if not b:
        return dict(a)
    if set(a) != set(b):
        raise ValueError("cannot merge cubes of different cliques")
    return {c: a[c] + b[c] for c in a}


def empty_cubes(domain: TableDomain, cliques: Iterable[Clique]) -> dict[Clique, np.ndarray]:
    return {c: np.zeros([domain[n].size for n in c], dtype=np.int64) for c in cliques}


def project_cube(cube: np.ndarray, clique: Clique, onto: Clique) -> np.ndarray:
    """The marginal of a cube on a sub-clique (sum over the other axes), axes in ``onto``'s order."""
    axes = tuple(i for i, c in enumerate(clique) if c not in onto)
    sub = cube.sum(axis=axes)
    kept = [c for c in clique if c in onto]
    return np.transpose(sub, [kept.index(c) for c in onto])
