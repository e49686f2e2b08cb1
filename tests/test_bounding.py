"""Contribution bounding: at most k rows per unit, chosen by the keyed hash, independent of row order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from dpbeam.bounding import BoundingKey, bound_rows, unit_hashes

KEY = BoundingKey(b"k" * 32)


def _bound(units, codes, k, key=KEY):
    h1, h2 = unit_hashes(pa.array(units), key)
    return bound_rows(h1, h2, np.asarray(codes), k, key)


def _kept_multiset(units, codes, keep):
    return sorted((str(units[i]), tuple(np.asarray(codes)[i])) for i in keep)


def test_at_most_k_rows_per_unit():
    rng = np.random.default_rng(0)
    units = rng.integers(0, 50, 5000)
    codes = rng.integers(0, 4, (5000, 3)).astype(np.uint8)
    for k in (1, 3, 10):
        keep = _bound(units, codes, k)
        per_unit = np.bincount(units[keep], minlength=50)
        assert per_unit.max() <= k
        # a unit with at least k rows keeps exactly k; a smaller one keeps all of its rows
        np.testing.assert_array_equal(per_unit, np.minimum(np.bincount(units, minlength=50), k))


def test_deterministic_for_a_key_and_independent_of_order():
    rng = np.random.default_rng(1)
    units = rng.choice(["ann", "bob", "cy", "dee"], 400)
    codes = rng.integers(0, 5, (400, 2))
    keep = _bound(units, codes, 2)
    assert _kept_multiset(units, codes, keep) == _kept_multiset(units, codes, _bound(units, codes, 2))
    perm = rng.permutation(400)
    keep_p = _bound(units[perm], codes[perm], 2)
    assert _kept_multiset(units, codes, keep) == _kept_multiset(units[perm], codes[perm], keep_p)


def test_another_key_chooses_other_rows():
    rng = np.random.default_rng(2)
    units = np.repeat(np.arange(20), 50)
    codes = rng.integers(0, 100, (1000, 2))
    a = _kept_multiset(units, codes, _bound(units, codes, 5, BoundingKey(b"a" * 32)))
    b = _kept_multiset(units, codes, _bound(units, codes, 5, BoundingKey(b"b" * 32)))
    assert a != b


def test_string_and_integer_units_hash_to_128_bits():
    h1, h2 = unit_hashes(pa.array(["x", "y", "x"]), KEY)
    assert h1.dtype == np.uint64 and h1[0] == h1[2] and h1[0] != h1[1] and h2[0] != h2[1]
    g1, g2 = unit_hashes(pa.array([7, 8, 7]), KEY)
    assert g1[0] == g1[2] and g1[0] != g1[1]


@settings(max_examples=60, deadline=None)
@given(
    others=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2), st.integers(0, 2)), max_size=40),
    newcomer=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=25),
    k=st.integers(1, 4),
)
def test_adding_a_unit_changes_no_other_units_choice(others, newcomer, k):
    """Stability: the rows kept for existing units do not depend on whether another unit is present, and the new
    unit adds at most k rows. This is what makes every sensitivity a function of k."""
    units = [u for u, _, _ in others]
    codes = [(a, b) for _, a, b in others]
    before = _kept_multiset(units, codes, _bound(units, codes, k)) if units else []
    units2 = units + [99] * len(newcomer)
    codes2 = codes + list(newcomer)
    after = _kept_multiset(units2, codes2, _bound(units2, codes2, k))
    assert [r for r in after if r[0] != "99"] == before
    assert len(after) - len(before) <= k
