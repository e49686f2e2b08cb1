"""Exact counting of many cliques, merging by addition, and the L1/L2 sensitivity claim under k rows per unit."""

from __future__ import annotations


import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from dpbeam.bounding import BoundingKey, bound_rows, unit_hashes
from dpbeam.domain import BinnedDomain, TableDomain
from dpbeam.marginals import all_cliques, count_cliques, merge_cubes, project_cube

SIZES = [3, 4, 2]
DOM = TableDomain(tuple(BinnedDomain(f"c{i}", "int64", False, edges=tuple(range(s + 1))) for i, s in enumerate(SIZES)))
CLIQUES = all_cliques(DOM.names, 1) + all_cliques(DOM.names, 2) + all_cliques(DOM.names, 3)


def _codes(rng, n):
    return np.stack([rng.integers(0, s, n) for s in SIZES], 1).astype(np.uint8)


def test_counts_match_a_loop():
    codes = _codes(np.random.default_rng(0), 500)
    cubes = count_cliques(codes, DOM, CLIQUES)
    for clique in CLIQUES:
        idx = [DOM.index(c) for c in clique]
        expect = np.zeros([SIZES[i] for i in idx], dtype=np.int64)
        for row in codes:
            expect[tuple(row[idx])] += 1
        np.testing.assert_array_equal(cubes[clique], expect)


def test_partial_cubes_merge_by_addition():
    codes = _codes(np.random.default_rng(1), 1000)
    whole = count_cliques(codes, DOM, CLIQUES)
    parts = [count_cliques(codes[i : i + 137], DOM, CLIQUES) for i in range(0, 1000, 137)]
    merged = {}
    for p in parts:
        merged = merge_cubes(merged, p)
    for c in CLIQUES:
        np.testing.assert_array_equal(merged[c], whole[c])


def test_projection():
    codes = _codes(np.random.default_rng(2), 300)
    cubes = count_cliques(codes, DOM, CLIQUES)
    np.testing.assert_array_equal(project_cube(cubes[("c0", "c1", "c2")], ("c0", "c1", "c2"), ("c2", "c0")),
                                  cubes[("c0", "c2")].T)


@settings(max_examples=80, deadline=None)
@given(
    base=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 2), st.integers(0, 3), st.integers(0, 1)), max_size=60),
    unit_rows=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(0, 1)), min_size=1, max_size=30),
    k=st.integers(1, 5),
)
def test_one_unit_moves_every_cube_by_at_most_k(base, unit_rows, k):
    """The sensitivity claim of dpbeam.marginals: adding one unit with any rows, after bounding to k rows per unit,
    changes every exact cube by at most k in L1 and in L2."""
    key = BoundingKey(b"s" * 32)

    def cubes(rows):
        if not rows:
            return {c: np.zeros([SIZES[DOM.index(x)] for x in c], np.int64) for c in CLIQUES}
        units = pa.array([r[0] for r in rows])
        codes = np.array([r[1:] for r in rows], dtype=np.uint8)
        h1, h2 = unit_hashes(units, key)
        return count_cliques(codes[bound_rows(h1, h2, codes, k, key)], DOM, CLIQUES)

    before = cubes(base)
    after = cubes(base + [(1000,) + r for r in unit_rows])
    for c in CLIQUES:
        diff = (after[c] - before[c]).astype(float)
        assert np.abs(diff).sum() <= k
        assert np.sqrt((diff**2).sum()) <= k + 1e-9
