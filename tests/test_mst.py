"""MST spends exactly its budget, stage by stage, with the noise scales its docstring derives."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpbeam.domain import BinnedDomain, TableDomain
from dpbeam.marginals import count_cliques
from dpbeam.privacy.accountant import ZCDPAccountant
from dpbeam.privacy.mst import (
    LOW_SIGNAL_SPLIT,
    compress_cube,
    compress_rare,
    mst_plan,
    project_simplex,
    required_cliques,
    run_mst,
)

SIZES = [4, 3, 5, 2, 6]
DOM = TableDomain(tuple(BinnedDomain(f"c{i}", "int64", False, edges=tuple(range(s + 1))) for i, s in enumerate(SIZES)))


def _cubes(n=5000, seed=0):
    rng = np.random.default_rng(seed)
    c0 = rng.integers(0, 4, n)
    codes = np.stack([c0, (c0 + rng.integers(0, 2, n)) % 3, rng.integers(0, 5, n), c0 % 2, rng.integers(0, 6, n)], 1)
    return count_cliques(codes.astype(np.uint8), DOM, required_cliques(DOM.names))


@pytest.mark.parametrize("k", [1, 4])
def test_mst_spends_exactly_its_budget(k):
    acc = ZCDPAccountant(1.0, 1e-9, mst_plan(len(SIZES)))
    result = run_mst(_cubes(), DOM, k, acc)
    d = len(SIZES)
    for stage in ("mst.one_way", "mst.select", "mst.measure"):
        assert acc.spent(stage) == pytest.approx(acc.allotted(stage), rel=1e-9)
        assert acc.spent(stage) <= acc.allotted(stage) * (1 + 1e-9)
    assert acc.spent() == pytest.approx(acc.rho, rel=1e-9)
    # noise scales from the docstring: sigma_1 = k sqrt(d / (2 rho_1)), sigma_3 = k sqrt((d-1) / (2 rho_3))
    rho_stage = acc.rho / 3
    one = [m for m in result.measurements if len(m.clique) == 1]
    two = [m for m in result.measurements if len(m.clique) == 2]
    assert len(one) == d and len(two) == d - 1
    assert one[0].stddev == pytest.approx(k * math.sqrt(d / (2 * rho_stage)), rel=1e-9)
    assert two[0].stddev == pytest.approx(k * math.sqrt((d - 1) / (2 * rho_stage)), rel=1e-9)
    # selections: d - 1 charges with sensitivity k
    sel = [c for c in acc.charges if c.stage == "mst.select"]
    assert len(sel) == d - 1 and all(c.detail["sensitivity"] == k for c in sel)


def test_tree_spans_all_columns():
    acc = ZCDPAccountant(5.0, 1e-9, mst_plan(len(SIZES)))
    tree = run_mst(_cubes(), DOM, 1, acc).tree
    parent = {n: n for n in DOM.names}

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in tree:
        assert find(a) != find(b), "the selected edges form a cycle"
        parent[find(a)] = find(b)
    assert len({find(n) for n in DOM.names}) == 1


def test_single_column_spends_everything_on_one_way():
    dom = TableDomain(DOM.columns[:1])
    acc = ZCDPAccountant(1.0, 1e-9, mst_plan(1))
    cubes = {("c0",): np.array([10, 20, 30, 40])}
    result = run_mst(cubes, dom, 1, acc)
    assert len(result.measurements) == 1 and acc.spent() == pytest.approx(acc.rho)


def test_compression_merges_rare_codes_and_keeps_the_scale():
    noisy = np.array([500, 2, -3, 400, 1])
    mapping = compress_rare(noisy, threshold=30)
    assert mapping.tolist() == [0, 2, 2, 1, 2]
    cube = np.arange(10).reshape(5, 2)
    np.testing.assert_array_equal(compress_cube(cube, ("a", "b"), {"a": mapping}),
                                  [[0, 1], [6, 7], [2 + 4 + 8, 3 + 5 + 9]])
    assert compress_rare(np.array([100, 100, 1]), 30) is None  # one rare code: nothing to merge
    acc = ZCDPAccountant(0.05, 1e-9, mst_plan(len(SIZES)))  # small eps: large sigma, many rare codes
    result = run_mst(_cubes(), DOM, 1, acc)
    for m in result.measurements:
        if m.weights is not None:
            merged = int((result.compression[m.clique[0]] == m.values.size - 1).sum())
            assert m.weights[-1] == pytest.approx(1 / math.sqrt(merged))


def test_project_simplex():
    np.testing.assert_allclose(project_simplex(np.array([3.0, -1.0, 0.5]), 2.0), [2.0, 0.0, 0.0])
    x = project_simplex(np.array([1.0, 1.2, -0.1]), 3.0)  # theta = -0.3: every entry moves up by 0.3
    np.testing.assert_allclose(x, [1.3, 1.5, 0.2])


@pytest.mark.parametrize("rounds", [1, 2])
def test_refinement_spends_exactly_its_budget(rounds):
    from dpbeam.privacy.refine import run_refinement

    from dpbeam.privacy.refine import decide_refinement

    acc = ZCDPAccountant(1.0, 1e-9, mst_plan(len(SIZES), refine=True))
    cubes = _cubes()
    assert decide_refinement(cubes, DOM, 2, acc, per_round=2, rounds=rounds)  # small cubes, 5,000 rows: it pays
    base = run_mst(cubes, DOM, 2, acc)
    result = run_refinement(cubes, DOM, 2, acc, base, rounds=rounds, per_round=2, fit_iters=50)
    assert acc.spent() == pytest.approx(acc.rho, rel=1e-9)
    assert acc.spent("refine") <= acc.allotted("refine") * (1 + 1e-9)
    assert len(result.refined) == 2 * rounds
    measured = [tuple(m.clique) for m in result.measurements]
    assert len(set(measured)) == len(measured), "a marginal was measured twice"
    sel = [c for c in acc.charges if c.stage == "refine" and c.mechanism.startswith("exponential")]
    assert len(sel) == 2 * rounds and all(c.detail["sensitivity"] == 2 for c in sel)


def test_refinement_respects_the_model_size_limit():
    from dpbeam.privacy.refine import run_refinement
    from dpbeam.synth.pgm import junction_tree_cells_of

    acc = ZCDPAccountant(1.0, 1e-9, mst_plan(len(SIZES), refine=True))
    cubes = _cubes()
    base = run_mst(cubes, DOM, 1, acc)
    result = run_refinement(cubes, DOM, 1, acc, base, per_round=6, max_cells=40, fit_iters=50)
    sizes = {n: DOM[n].size for n in DOM.names}
    assert junction_tree_cells_of(sizes, [tuple(m.clique) for m in result.measurements]) <= 40
    # whatever the limit let through, the stage still spends exactly its allotment
    assert acc.spent("refine") == pytest.approx(acc.allotted("refine"), rel=1e-9)


def test_pair_marginals_match_variable_elimination():
    from itertools import combinations

    from dpbeam.measurements import MeasurementsArtifact
    from dpbeam.synth import pgm

    acc = ZCDPAccountant(2.0, 1e-9, mst_plan(len(SIZES)))
    result = run_mst(_cubes(), DOM, 1, acc)
    model = pgm.fit(MeasurementsArtifact(DOM, result.compression, result.measurements, {}, {}), iters=100)
    pairs = list(combinations(DOM.names, 2))
    fast = model.pair_marginals(pairs)
    for p in pairs:
        np.testing.assert_allclose(fast[p], model.marginal(p), rtol=1e-6, atol=1e-6)


def test_refinement_dropped_when_noise_would_swamp_it(monkeypatch):
    """At eps = 0.01 on 5,000 rows a refined pair's expected noise (sigma ~ 2,900, median 15 cells: ~7 times the row
    count) is far above the limit of 2: after the row count, refinement is dropped and MST gets the rest in its
    low-signal split (most of it to the 1-way marginals); the total spent is unchanged.

    The rule is tested on the exact count: the noisy count's own noise (sigma ~ 4,900 at 1% of rho) crosses the
    limit (~12,500) about 6% of the time whatever the epsilon, since both scale as 1/sqrt(rho). So the count's noise
    draw is replaced by zero noise here (its rho is still charged, from OpenDP's map)."""
    from dpbeam.privacy import refine
    from dpbeam.privacy.noise import gaussian_rho

    def exact(counts, sigma, sensitivity):
        return np.asarray(counts), gaussian_rho(sigma, sensitivity)

    monkeypatch.setattr(refine, "add_discrete_gaussian", exact)
    decide_refinement = refine.decide_refinement

    acc = ZCDPAccountant(0.01, 1e-9, mst_plan(len(SIZES), refine=True))
    cubes = _cubes()
    assert decide_refinement(cubes, DOM, 1, acc) is False
    assert "refine" not in acc.plan and acc.spent("total") > 0
    free = acc.rho - acc.allotted("total")
    for stage, share in LOW_SIGNAL_SPLIT.items():
        assert acc.allotted(f"mst.{stage}") == pytest.approx(free * share)
    assert acc.allotted("mst.one_way") > acc.allotted("mst.measure") > 0
    d = len(SIZES)
    result = run_mst(cubes, DOM, 1, acc)
    assert acc.spent() == pytest.approx(acc.rho, rel=1e-9)
    assert acc.record()["reallocations"][0]["after"]["mst.one_way"] == pytest.approx(free * 0.6 / acc.rho)
    # the scales follow the new split: sigma_1 = k sqrt(d / (2 rho_1)), sigma_3 = k sqrt((d - 1) / (2 rho_3))
    sigmas = {len(m.clique): m.stddev for m in result.measurements}
    assert sigmas[1] == pytest.approx(math.sqrt(d / (2 * free * 0.6)), rel=1e-9)
    assert sigmas[2] == pytest.approx(math.sqrt((d - 1) / (2 * free * 0.2)), rel=1e-9)


def test_refinement_kept_when_signal_is_strong():
    from dpbeam.privacy.refine import decide_refinement

    acc = ZCDPAccountant(50.0, 1e-9, mst_plan(len(SIZES), refine=True))
    assert decide_refinement(_cubes(), DOM, 1, acc) is True
    assert "refine" in acc.plan and acc.spent("refine") == 0


def test_replan_refuses_spent_stages():
    from dpbeam.errors import BudgetError

    acc = ZCDPAccountant(1.0, 1e-9, {"a": 0.5, "b": 0.25, "c": 0.25})
    acc.charge("b", "test", 1e-6)
    with pytest.raises(BudgetError):
        acc.replan({"b": 0.5, "c": 0.5})
    acc.replan({"c": 0.2, "d": 0.8})
    assert acc.allotted("d") == pytest.approx(0.6 * acc.rho) and acc.allotted("b") == pytest.approx(0.25 * acc.rho)
    assert "a" not in acc.plan


def test_merged_codes_expand_in_proportion_to_their_noisy_counts(tmp_path):
    """A merged code is decoded to its original codes in proportion to their noisy 1-way counts clipped at 0: code 2
    (noisy count -3, e.g. a null code that never occurs) gets no rows, codes 1 and 4 share 3:1. 40,000 draws: the
    binomial s.d. of a 0.75 share is 0.0022, so 0.011 is five of them. A group whose weights are all 0 is uniform."""
    from dpbeam.measurements import MeasurementsArtifact
    from dpbeam.privacy.mst import expansion_weights

    dom = TableDomain((BinnedDomain("a", "int64", False, edges=tuple(range(6))),))
    noisy = np.array([500, 30, -3, 400, 10])
    mapping = np.array([0, 2, 2, 1, 2])
    art = MeasurementsArtifact(dom, {"a": mapping}, (), {"epsilon": 1.0}, expansion={"a": expansion_weights(noisy)})
    codes = art.expand_codes(np.full((40_000, 1), 2), np.random.default_rng(0))[:, 0]
    share = np.bincount(codes, minlength=5) / len(codes)
    assert share[2] == 0 and share[0] == 0 and share[3] == 0
    assert abs(share[1] - 0.75) < 0.011 and abs(share[4] - 0.25) < 0.011
    # kept codes map back to themselves
    np.testing.assert_array_equal(art.expand_codes(np.array([[0], [1]]), np.random.default_rng(0))[:, 0], [0, 3])
    # all weights 0 in the group: uniform over its three codes (five s.d. of a 1/3 share over 30,000 draws: 0.014)
    flat = MeasurementsArtifact(dom, {"a": mapping}, (), {"epsilon": 1.0}, expansion={"a": expansion_weights(
        np.array([500, -1, -3, 400, 0]))})
    codes = flat.expand_codes(np.full((30_000, 1), 2), np.random.default_rng(1))[:, 0]
    share = np.bincount(codes, minlength=5) / len(codes)
    assert np.all(np.abs(share[[1, 2, 4]] - 1 / 3) < 0.014)
    # the weights travel with the artifact
    flat.write(str(tmp_path / "m"))
    np.testing.assert_array_equal(MeasurementsArtifact.read(str(tmp_path / "m")).expansion["a"], [500, 0, 0, 400, 0])


def test_mst_keeps_the_noisy_counts_of_compressed_columns():
    acc = ZCDPAccountant(0.05, 1e-9, mst_plan(len(SIZES)))  # small eps: many rare codes
    result = run_mst(_cubes(), DOM, 1, acc)
    assert result.compression and set(result.expansion) == set(result.compression)
    for n, w in result.expansion.items():
        assert len(w) == DOM[n].size and np.all(w >= 0)
        # kept codes' weights are their (positive) noisy counts, the same the 1-way measurement holds
        one = next(m for m in result.measurements if m.clique == (n,))
        kept = result.compression[n] < result.compression[n].max()
        np.testing.assert_allclose(w[kept], one.values[result.compression[n][kept]])
