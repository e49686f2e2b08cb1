"""Coarse 2-way measurements: groups chosen from noisy counts, the same sensitivity and rho, and both synthesis
engines fitting the grouped values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpbeam.domain import BinnedDomain, CategoricalDomain, TableDomain
from dpbeam.marginals import count_cliques
from dpbeam.measurements import MeasurementsArtifact, NoisyMarginal
from dpbeam.privacy.accountant import ZCDPAccountant
from dpbeam.privacy.mst import measure_pair
from dpbeam.privacy.resolution import (
    allowed_cells,
    coarse_cube,
    column_groups,
    group_counts,
    pair_groups,
    value_codes,
)

NUM = BinnedDomain("num", "int64", True, edges=tuple(range(13)))  # 12 bins + null
CAT = CategoricalDomain("cat", "string", False, values=tuple("abcdefghij"))  # 10 values + other
DOM = TableDomain((NUM, CAT))


def test_group_counts_fit_the_cells_and_stay_balanced():
    for sa, sb, cells in [(13, 11, 20), (40, 2, 10), (3, 3, 4), (100, 100, 30), (5, 5, 100)]:
        ga, gb = group_counts(sa, sb, cells)
        assert 2 <= ga <= sa and 2 <= gb <= sb
        assert ga * gb <= max(cells, 4)
        if sa * sb <= cells:
            assert (ga, gb) == (sa, sb)
    assert group_counts(40, 2, 10) == (5, 2)  # the small column keeps its codes; the large one takes the cut
    assert group_counts(100, 100, 30) == (5, 6)


def test_allowed_cells_follow_the_noise():
    # expected noise TVD 0.5 sqrt(2/pi) sigma cells / N <= 0.1: N = 10,000 and sigma = 10 allow 250 cells
    assert allowed_cells(10.0, 10_000, 0.1) == int(0.1 * 10_000 / (0.5 * math.sqrt(2 / math.pi) * 10))
    assert allowed_cells(1e6, 10, 0.1) == 4  # never below 2 x 2


def test_ordinal_groups_are_contiguous_and_hold_equal_mass():
    ordered, special = value_codes(DOM, "num", {})
    assert ordered == list(range(12)) and special == [12]  # the null code is not an ordered value
    noisy = np.array([100, 100, 100, 100, 0, 0, 0, 0, 100, 100, 100, 100, 50], dtype=float)
    g = column_groups(noisy, 5, ordered, special, ordinal=True)
    values = g[:12]
    assert np.all(np.diff(values) >= 0), "ordinal groups must be runs of adjacent codes"
    assert len(np.unique(values)) == 4 and g[12] == 4  # 4 value groups of 200 each, the null code its own group
    mass = np.bincount(values, weights=noisy[:12])
    np.testing.assert_allclose(mass, 200)


def test_nominal_groups_keep_the_largest_values():
    ordered, special = value_codes(DOM, "cat", {})
    assert special == [10]  # the other code
    noisy = np.array([5, 90, 3, 70, -4, 60, 1, 2, 0, 1, 8], dtype=float)
    g = column_groups(noisy, 4, ordered, special, ordinal=False)
    assert g[1] == 0 and g[3] == 1 and g[5] == 2
    assert set(g[[0, 2, 4, 6, 7, 8, 9, 10]]) == {3}


def test_value_codes_after_compression():
    # codes 3..9 of cat merged by MST's compression into model code 3 (the last)
    mapping = np.array([0, 1, 2, 3, 3, 3, 3, 3, 3, 3, 3])
    ordered, special = value_codes(DOM, "cat", {"cat": mapping})
    assert ordered == [0, 1, 2] and special == [3]


def _cubes(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 12, n)
    b = (a + rng.integers(0, 3, n)) % 11
    codes = np.stack([a, b], 1).astype(np.uint8)
    return count_cliques(codes, DOM, [("num",), ("cat",), ("num", "cat")])


@pytest.mark.parametrize("k", [1, 3])
def test_a_grouped_measurement_costs_what_a_whole_one_does(k):
    cubes = _cubes()
    one_way = {n: cubes[(n,)].astype(float) for n in DOM.names}
    sigma = 400.0  # 13 x 11 cells at sigma 400 against 3,000 rows: far past the noise limit, so groups are used
    acc = ZCDPAccountant(1.0, 1e-9, {"m": 1.0})
    m = measure_pair(("num", "cat"), cubes, DOM, {}, one_way, 3000.0, sigma, k, acc, "m")
    assert m.groups is not None
    shape = tuple(int(g.max()) + 1 for g in m.groups)
    assert m.values.shape == shape and np.prod(shape) <= allowed_cells(sigma, 3000.0)
    # zCDP of the discrete Gaussian at L2 sensitivity k: rho = k^2 / (2 sigma^2), whatever the grouping
    assert acc.spent("m") == pytest.approx(k**2 / (2 * sigma**2), rel=1e-12)
    assert acc.charges[-1].detail["sensitivity_l2"] == k
    # the values are the exact grouped cube plus noise of scale sigma (6 sigma covers every cell here)
    exact = coarse_cube(cubes[("num", "cat")], m.groups)
    assert np.abs(m.values - exact).max() < 6 * sigma
    # with little noise the pair is measured whole
    roomy = ZCDPAccountant(1000.0, 1e-9, {"m": 1.0})
    whole = measure_pair(("num", "cat"), cubes, DOM, {}, one_way, 3000.0, 1.0, k, roomy, "m")
    assert whole.groups is None and whole.values.shape == (13, 11)


def test_grouping_keeps_the_unit_sensitivity():
    """Adding one unit's k rows anywhere moves the grouped cube by at most k in L1 and L2 (summing cells cannot
    spread a row over two cells)."""
    rng = np.random.default_rng(1)
    groups = (np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4]), np.array([0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]))
    base = coarse_cube(_cubes()[("num", "cat")], groups)
    for k in (1, 4, 9):
        for _ in range(200):
            extra = np.zeros((13, 11), dtype=np.int64)
            np.add.at(extra, (rng.integers(0, 13, k), rng.integers(0, 11, k)), 1)
            moved = coarse_cube(_cubes()[("num", "cat")] + extra, groups) - base
            assert np.abs(moved).sum() == k
            assert np.sqrt((moved.astype(float) ** 2).sum()) <= k + 1e-12


def _artifact(groups, values, sigma=1.0):
    one = [NoisyMarginal(("num",), np.full(13, 100.0), sigma, "discrete Gaussian", 0.1),
           NoisyMarginal(("cat",), np.full(11, 1300 / 11), sigma, "discrete Gaussian", 0.1)]
    pair = NoisyMarginal(("num", "cat"), values, sigma, "discrete Gaussian", 0.1, groups=groups)
    return MeasurementsArtifact(DOM, {}, tuple(one + [pair]), {"epsilon": 1.0})


def _coarse_target():
    groups = (np.array([0] * 6 + [1] * 7), np.array([0] * 5 + [1] * 6))
    # uniform 1-way marginals (num: 100 a code, so 600 / 700 in its groups; cat: 1300 / 11 a code, so 5 / 11 and
    # 6 / 11 of 1,300 in its groups), and a coarse pair consistent with them in which num's low group sits mostly
    # with cat's low group (420 of its 600)
    cat_low = 1300 * 5 / 11
    values = np.array([[420.0, 180.0], [cat_low - 420.0, 700.0 - (cat_low - 420.0)]])
    return groups, values


def test_pgm_fits_the_grouped_values():
    from dpbeam.synth import pgm

    groups, values = _coarse_target()
    art = _artifact(groups, values, sigma=0.5)
    model = pgm.fit(art, iters=2000, converge=False)
    joint = model.clique_marginal(("num", "cat"))
    fitted = coarse_cube(joint, groups)
    # noise-free, consistent targets: the fit reaches them to well under one count (the data fix a unique optimum
    # of the loss only up to the grouping; any within-group split fits)
    np.testing.assert_allclose(fitted, values, atol=2.0)
    np.testing.assert_allclose(joint.sum(axis=1), 100.0, atol=2.0)


def test_torch_loss_reads_grouped_values():
    """The relaxed loss on a one-hot table equals the loss's definition, with the grouped pair compared in its
    groups: sum ||marginal - y||^2 / sigma^2 (sigma = 1, N / K = 1 here)."""
    import torch

    from dpbeam.synth import relaxed

    groups, values = _coarse_target()
    art = _artifact(groups, values)
    rows = 1300
    problem = relaxed.build_problem(art, "cpu", rows)
    assert problem.total == pytest.approx(1300.0)
    rng = np.random.default_rng(0)

    def definition(num: np.ndarray, cat: np.ndarray) -> float:
        joint = np.zeros((13, 11))
        np.add.at(joint, (num, cat), 1)
        return float(((joint.sum(1) - 100.0) ** 2).sum() + ((joint.sum(0) - 1300 / 11) ** 2).sum()
                     + ((coarse_cube(joint, groups) - values) ** 2).sum())

    for _ in range(3):
        num, cat = rng.integers(0, 13, rows), rng.integers(0, 11, rows)
        logits = torch.full((rows, 2, 13), -40.0)
        logits[torch.arange(rows), 0, torch.as_tensor(num)] = 40.0
        logits[torch.arange(rows), 1, torch.as_tensor(cat)] = 40.0
        assert float(relaxed.loss(logits, problem)) == pytest.approx(definition(num, cat), rel=1e-4)


def test_groups_survive_the_artifact_files(tmp_path):
    groups, values = _coarse_target()
    art = _artifact(groups, values)
    art.write(str(tmp_path / "m"))
    back = MeasurementsArtifact.read(str(tmp_path / "m"))
    pair = [m for m in back.measurements if len(m.clique) == 2][0]
    assert pair.values.shape == (2, 2)
    for g, h in zip(pair.groups, groups):
        np.testing.assert_array_equal(g, h)
    assert all(m.groups is None for m in back.measurements if len(m.clique) == 1)


def test_pair_groups_reads_only_its_inputs():
    """The choice is a function of public sizes, sigma and the noisy inputs: the same inputs, the same groups."""
    one_way = {"num": np.arange(13, dtype=float) * 10, "cat": np.arange(11, dtype=float)[::-1] * 10}
    a = pair_groups(("num", "cat"), DOM, {}, one_way, 300.0, 2000.0)
    b = pair_groups(("num", "cat"), DOM, {}, dict(one_way), 300.0, 2000.0)
    assert a is not None and all(np.array_equal(x, y) for x, y in zip(a, b))
