"""AIM: the workload, the scores' sensitivity, the budget spent exactly on every branch of the loop, the round log,
the numpy inference it scores with, and the whole job with ``method: aim``."""

from __future__ import annotations

import itertools
import json
import math
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import small_spec
from dpbeam.domain import BinnedDomain, TableDomain
from dpbeam.errors import SpecError
from dpbeam.marginals import count_cliques
from dpbeam.measurements import MeasurementsArtifact, NoisyMarginal
from dpbeam.privacy import aim
from dpbeam.privacy.accountant import ZCDPAccountant
from dpbeam.privacy.noise import gaussian_sigma
from dpbeam.spec import WorkloadSpec, parse_spec
from dpbeam.synth.calibrate import NamedTable
from dpbeam.synth.pgm import PGMModel

SIZES = [4, 3, 5, 2, 6]
DOM = TableDomain(tuple(BinnedDomain(f"c{i}", "int64", False, edges=tuple(range(s + 1))) for i, s in enumerate(SIZES)))
NAMES = list(DOM.names)


def _cubes(cliques, n=5000, seed=0):
    rng = np.random.default_rng(seed)
    c0 = rng.integers(0, 4, n)
    codes = np.stack([c0, (c0 + rng.integers(0, 2, n)) % 3, rng.integers(0, 5, n), c0 % 2, rng.integers(0, 6, n)], 1)
    return count_cliques(codes.astype(np.uint8), DOM, cliques)


def _run(eps=1.0, k=1, work=None, **kw):
    work = work or aim.workload(None, NAMES)
    acc = ZCDPAccountant(eps, 1e-9, aim.aim_plan())
    result = aim.run_aim(_cubes(aim.downward_closure(work, NAMES)), DOM, k, acc, work, **kw)
    return acc, result


def _assert_spent_exactly(acc):
    # the last round is sized to the remainder; each mechanism's scale errs safe by 1e-12 relative, so the charges
    # sum to the budget within 1e-9 relative and never above it
    assert acc.spent(aim.STAGE) == pytest.approx(acc.allotted(aim.STAGE), rel=1e-9)
    assert acc.spent(aim.STAGE) <= acc.allotted(aim.STAGE)
    assert acc.record()["rho"] == acc.rho  # the reported guarantee is the budget's


# ----------------------------------------------------------------------------------------------------------------------
# Workload


def test_default_workload_is_every_pair_and_its_closure_every_one_way():
    work = aim.workload(None, NAMES)
    assert [c for c, _ in work] == list(itertools.combinations(NAMES, 2)) and {w for _, w in work} == {1.0}
    closure = aim.downward_closure(work, NAMES)
    assert closure == [(n,) for n in NAMES] + list(itertools.combinations(NAMES, 2))
    # w_r = sum_s |r n s|: a pair meets itself (2) and the 2 (d - 2) pairs sharing one column; a column d - 1 pairs
    weights = aim.candidate_weights(work, closure)
    d = len(NAMES)
    assert weights[("c0",)] == d - 1 and weights[("c0", "c1")] == 2 + 2 * (d - 2)


def test_three_way_and_weighted_workloads():
    work = aim.workload(WorkloadSpec(three_way=["c3", "c0", "c1"]), NAMES)
    assert ("c0", "c1", "c3") in [c for c, _ in work] and len(work) == 10 + 1
    assert ("c0", "c1", "c3") in aim.downward_closure(work, NAMES)
    spec = WorkloadSpec.model_validate({"cliques": [{"columns": ["c1", "c0"], "weight": 0.5},
                                                    {"columns": ["c2", "c3", "c4"], "weight": 2}]})
    work = aim.workload(spec, NAMES)
    assert work == [(("c0", "c1"), 0.5), (("c2", "c3", "c4"), 2.0)]
    closure = aim.downward_closure(work, NAMES)
    assert len(closure) == 5 + 1 + 3 + 1  # every 1-way, c0c1, the three pairs and the triple of c2c3c4
    w = aim.candidate_weights(work, closure)  # non-integer weights: scaled to 1000 for the largest, rounded
    assert w[("c0", "c1")] == 2 * 250 and w[("c2", "c3", "c4")] == 3 * 1000 and w[("c1",)] == 250 and w[("c2", "c3")] == 2000


@pytest.mark.parametrize("workload, message", [
    ({"three_way": ["c0", "nope", "c1"]}, "not columns of the spec"),
    ({"three_way": ["c0", "c1"]}, "at least 3 columns"),
    ({"cliques": [{"columns": ["c0", "c0"]}]}, "names a column twice"),
])
def test_bad_workload_is_refused_before_any_data(workload, message):
    with pytest.raises(SpecError, match=message):
        aim.workload(WorkloadSpec.model_validate(workload), NAMES)


def test_spec_fields(small_parquet, tmp_path):
    base = small_spec(small_parquet, str(tmp_path / "out"))
    spec = parse_spec({**base, "synthesizer": {"method": "aim", "workload": {"three_way": ["color", "age", "score"]},
                                               "max_minutes": 2}})
    assert spec.synthesizer.max_minutes == 2 and spec.synthesizer.workload.three_way == ["color", "age", "score"]
    with pytest.raises(SpecError, match="apply to method aim only"):
        parse_spec({**base, "synthesizer": {"method": "mst-refined", "max_minutes": 2}})
    with pytest.raises(SpecError, match="not both"):
        parse_spec({**base, "synthesizer": {"method": "aim", "workload": {"three_way": ["age", "color", "day"],
                                                                          "cliques": [{"columns": ["age"]}]}}})
    with pytest.raises(SpecError, match="does not apply to method aim"):
        parse_spec({**base, "synthesizer": {"method": "aim", "budget_split": {"one_way": 0.5, "select": 0.5}}})
    from dpbeam.job import plan_job

    bad = parse_spec({**base, "synthesizer": {"method": "aim", "workload": {"three_way": ["age", "color", "x"]}}})
    with pytest.raises(SpecError, match="synthesizer.workload.three_way"):
        plan_job(bad)  # refused at plan time, before a row is read or budget spent


# ----------------------------------------------------------------------------------------------------------------------
# The score and its sensitivity


def _neighbour(exact: np.ndarray, k: int, rng: np.random.Generator, remove: bool) -> np.ndarray:
    """The cube with one unit of k rows added, or removed (never below zero in a cell), spread over random cells."""
    out = exact.copy()
    for _ in range(k):
        cell = tuple(rng.integers(0, s) for s in exact.shape)
        if remove and out[cell] > 0:
            out[cell] -= 1
        else:
            out[cell] += 1
    return out


def test_score_moves_by_at_most_weight_times_k():
    rng = np.random.default_rng(3)
    for trial in range(200):
        shape = tuple(rng.integers(1, 6, size=rng.integers(1, 4)))
        exact = rng.integers(0, 50, size=shape)
        model = rng.random(shape) * 60  # fixed before the data: one model for both neighbours
        k, weight, sigma = int(rng.integers(1, 5)), int(rng.integers(1, 30)), float(rng.random() * 20)
        neighbour = _neighbour(exact, k, rng, remove=bool(trial % 2))
        a, b = aim.score(exact, model, weight, sigma), aim.score(neighbour, model, weight, sigma)
        assert isinstance(a, int) and abs(a - b) <= weight * k


def test_selections_use_the_weighted_sensitivity():
    spec = WorkloadSpec.model_validate({"cliques": [{"columns": ["c0", "c1"], "weight": 3},
                                                    {"columns": ["c2", "c3"], "weight": 1}]})
    work = aim.workload(spec, NAMES)
    acc, _ = _run(eps=2.0, k=3, work=work)
    weights = aim.candidate_weights(work, aim.downward_closure(work, NAMES))
    selections = [c for c in acc.charges if c.mechanism.startswith("exponential")]
    assert selections and all(c.detail["sensitivity"] == 3 * max(weights.values()) for c in selections)
    # every measurement: L2 sensitivity k, rho = k^2 / (2 sigma^2)
    for c in acc.charges:
        if c.mechanism == "discrete Gaussian":
            assert c.detail["sensitivity_l2"] == 3
            assert c.rho == pytest.approx(9 / (2 * c.detail["sigma"] ** 2), rel=1e-9)


def test_first_selection_finds_the_dependent_pair():
    """c1 is a function of c0 plus noise and c3 = c0 mod 2; every other pair is independent. After the 1-way round the
    independent model misses (c0, c1) by ~5000 in L1 (most of the table) and (c0, c3) by ~4400. At eps = 5 the first
    selection has rho_s = 0.1 rho / 80 (rho ~ 0.47), so its Gumbel scale is Delta / sqrt(2 rho_s) ~ 8 / 0.024 ~ 330
    score units; the winner's score exceeds any independent pair's (L1 error within sampling noise, a few hundred,
    minus the penalty) by >= 8 x 3000, ~60 Gumbel scales: a wrong pick has probability below e^-50."""
    _, result = _run(eps=5.0)
    assert result.rounds[1]["clique"][0] in (["c0", "c1"], ["c0", "c3"])


# ----------------------------------------------------------------------------------------------------------------------
# The budget on every branch


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("eps", [0.3, 5.0])
def test_spends_exactly_its_budget(eps, k):
    acc, result = _run(eps=eps, k=k)
    _assert_spent_exactly(acc)
    d = len(NAMES)
    # the 1-way round: rho_1 = share rho / d each, sigma = k / sqrt(2 rho_1); the rounds start from what is left / T
    one = aim.ONE_WAY_SHARE * acc.rho / d
    assert result.rounds[0]["sigma"] == pytest.approx(k / math.sqrt(2 * one), rel=1e-9)
    rho_m, rho_s = aim.initial_plan(acc.rho - d * one, d)
    assert [m.stddev for m in result.measurements[:d]] == [result.rounds[0]["sigma"]] * d
    assert result.rounds[-1]["last"] and not any(r["last"] for r in result.rounds[:-1])
    # each later round's measurement is rho_m = k^2 / (2 sigma^2), ANNEAL^j times the initial after j anneals
    anneals = 0
    for r in result.rounds[1:-1]:
        assert r["rho_measure"] == pytest.approx(rho_m * aim.ANNEAL ** anneals, rel=1e-9)
        assert r["rho_select"] == pytest.approx(rho_s * aim.ANNEAL ** anneals, rel=1e-9)
        assert r["sigma"] == pytest.approx(gaussian_sigma(r["rho_measure"], k), rel=1e-12)
        anneals += r["annealed"]
    assert len(result.measurements) == d + len(result.rounds) - 1


def test_time_cap_sends_the_rest_to_one_last_round():
    times = iter([0.0] + [1e9] * 100)  # the clock reads 0 at the start, then far past max_minutes
    acc, result = _run(eps=2.0, max_minutes=1.0, clock=lambda: next(times))
    assert len(result.rounds) == 2 and result.rounds[1]["last"]
    _assert_spent_exactly(acc)
    assert result.rounds[1]["rho_measure"] == pytest.approx(0.9 * acc.rho * (1 - aim.ONE_WAY_SHARE), rel=1e-9)


def test_annealing_every_round_still_ends_on_the_budget(monkeypatch):
    monkeypatch.setattr(aim, "EXPECTED_ABS", 1e6)  # every measurement "tells the model nothing": always anneal
    monkeypatch.setattr(aim, "LOW_SIGNAL_NOISE", math.inf)  # (that noise would also send it down the low-signal branch)
    acc, result = _run(eps=1.0)
    # rho_round grows by ANNEAL every round from (what is left) / T, T = 16 d: the remainder falls below 2 rho_round
    # after at most log_ANNEAL(T) rounds
    assert all(r["annealed"] for r in result.rounds[1:-1])
    assert len(result.rounds) <= 2 + math.ceil(math.log(16 * len(NAMES), aim.ANNEAL))
    _assert_spent_exactly(acc)


@pytest.mark.parametrize("k", [1, 3])
def test_low_signal_measures_the_one_way_marginals_twice_and_ends_on_the_budget(monkeypatch, k):
    monkeypatch.setattr(aim, "LOW_SIGNAL_NOISE", 0.0)  # any noise is "too much": the branch is taken
    acc, result = _run(eps=1.0, k=k)
    _assert_spent_exactly(acc)
    d = len(NAMES)
    first, second = result.rounds[0], result.rounds[1]
    assert second["clique"] == [[n] for n in NAMES] and second["round"] == 2 and not second["last"]
    # rho_2 = LOW_SIGNAL_SHARE rho / d each, at L2 sensitivity k; both charged, 2 d charges before the first selection
    assert second["sigma"] == pytest.approx(k / math.sqrt(2 * aim.LOW_SIGNAL_SHARE * acc.rho / d), rel=1e-9)
    gauss = [c for c in acc.charges if c.mechanism == "discrete Gaussian"]
    assert [c.detail["clique"] for c in gauss[:2 * d]] == [[n] for n in NAMES] * 2
    assert all(c.detail["sensitivity_l2"] == k and c.rho == pytest.approx(k**2 / (2 * c.detail["sigma"] ** 2),
                                                                           rel=1e-9) for c in gauss)
    # the two are combined by inverse variance: one measurement per column, at the combined scale
    combined = (first["sigma"] ** -2 + second["sigma"] ** -2) ** -0.5
    assert [m.stddev for m in result.measurements[:d]] == pytest.approx([combined] * d, rel=1e-12)
    assert len(result.measurements) == d + len(result.rounds) - 2
    # the rounds start from what is left after both: rho_L / T
    rho_m, _ = aim.initial_plan(acc.rho * (1 - aim.ONE_WAY_SHARE - aim.LOW_SIGNAL_SHARE), d)
    assert result.rounds[2]["rho_measure"] == pytest.approx(rho_m, rel=1e-9) or result.rounds[2]["last"]


def test_low_signal_rule_reads_sizes_total_and_sigma():
    """The median over pairs of sqrt(2/pi) sigma n_a n_b / N against LOW_SIGNAL_NOISE (deterministic)."""
    cells = {("a",): 10, ("b",): 10, ("c",): 100}
    # pairs: 100, 1000, 1000 cells; median 1000 cells x sqrt(2/pi) sigma / N
    at = aim.LOW_SIGNAL_NOISE / (aim.EXPECTED_ABS * 1000)  # sigma / N at which the median equals the limit
    assert aim.low_signal(cells, 1000.0, 1.01 * at * 1000, 3) and not aim.low_signal(cells, 1000.0, 0.99 * at * 1000, 3)
    assert not aim.low_signal({("a",): 10}, 1.0, 1e9, 1)  # one column: nothing to select among


def _group(rng, size):
    """A random map of ``size`` codes onto 1..size groups, every group used."""
    g = int(rng.integers(1, size + 1))
    return rng.permutation(np.arange(size) % g)


def test_grouped_score_moves_by_at_most_weight_times_k():
    """A grouped candidate's score is aim.score on the cube summed within groups (exact and model alike). Summing
    cells cannot spread a row over two cells, so one unit still moves the grouped cube by <= k in L1 and the score by
    <= w k: the exponential mechanism's Delta = k max w covers it (deterministic: exact integer arithmetic)."""
    rng = np.random.default_rng(4)
    for trial in range(200):
        shape = tuple(int(x) for x in rng.integers(1, 7, size=2))
        pick = aim.Candidate(("c0", "c1"), tuple(_group(rng, s) for s in shape))
        exact = rng.integers(0, 50, size=shape)
        model = rng.random(shape) * 60
        k, weight, sigma = int(rng.integers(1, 5)), int(rng.integers(1, 30)), float(rng.random() * 20)
        neighbour = _neighbour(exact, k, rng, remove=bool(trial % 2))
        coarse, coarse_n = pick.cube(exact), pick.cube(neighbour)
        assert coarse.shape == tuple(pick.group_counts) and coarse.sum() == exact.sum()
        assert np.abs(coarse - coarse_n).sum() <= k  # the grouped cube's L1 (and so L2) sensitivity is still k
        a = aim.score(coarse, pick.cube(model), weight, sigma)
        b = aim.score(coarse_n, pick.cube(model), weight, sigma)
        assert isinstance(a, int) and abs(a - b) <= weight * k
        # the penalty counts the grouped cells: sqrt(2/pi) sigma (g_a g_b), rounded up
        assert aim.score(coarse, coarse, 1, sigma) == -math.ceil(aim.EXPECTED_ABS * sigma * coarse.size)


def test_pairs_are_offered_on_groups_only_when_their_noise_drowns_them():
    """Grouped offers read the noisy 1-way counts, a noisy total and sigma (post-processing); the whole clique stays
    offered beside them, so a pair measured on groups can later be measured whole."""
    cliques = aim.downward_closure(aim.workload(None, NAMES), NAMES)
    cubes = _cubes(cliques)
    one_way = {n: cubes[(n,)].astype(float) + 7.0 for n in NAMES}  # stand-ins for noisy counts
    quiet = aim.offers(cliques, DOM, {}, one_way, 1e-3, 5000.0)
    assert [c.clique for c in quiet] == cliques and all(c.groups is None for c in quiet)
    loud = aim.offers(cliques, DOM, {}, one_way, 500.0, 5000.0)
    grouped = [c for c in loud if c.groups is not None]
    assert [c.clique for c in loud[:len(cliques)]] == cliques and all(c.groups is None for c in loud[:len(cliques)])
    assert grouped and all(len(c.clique) == 2 for c in grouped)
    for c in grouped:
        a, b = c.clique
        assert [len(g) for g in c.groups] == [cubes[(a,)].size, cubes[(b,)].size]  # codes of the model domain
        # 500 x 0.4 / 5000 x cells <= 0.1 allows 2.5 cells: the floor of 2 x 2 groups per pair of >= 2 codes
        assert math.prod(c.group_counts) <= max(4, SIZES[NAMES.index(a)] * SIZES[NAMES.index(b)])
        assert math.prod(c.group_counts) < cubes[c.clique].size


@pytest.mark.parametrize("k", [1, 3])
def test_grouped_rounds_are_charged_as_whole_ones_and_end_on_the_budget(monkeypatch, k):
    """Force every pair onto groups (a grouped offer whenever the noise TVD exceeds 0): each grouped measurement is one
    discrete Gaussian on the grouped cube at the round's sigma, L2 sensitivity k, rho = k^2 / (2 sigma^2); every
    selection keeps Delta = k max w; the charges sum to the budget."""
    monkeypatch.setattr(aim, "GROUP_NOISE_TVD", (1e-9,))
    monkeypatch.setattr(aim, "GROUPED_SIGNAL", 0.0)
    work = aim.workload(None, NAMES)
    weights = aim.candidate_weights(work, aim.downward_closure(work, NAMES))
    # Whether a round picks a grouped offer is the exponential mechanism's (unseeded) draw: over the ~11 rounds of a
    # run the grouped picks number about 4 at k = 3 (Poisson-like), and none in ~1-2% of runs (measured: 6 of 450 runs
    # at k = 3, 0 of 300 at k = 1). The runs are independent, so up to `runs` of them (each fully checked, budget
    # and charges) until one measures on groups: a run with no grouped pick fails all `runs` with probability
    # ~0.02^4 ~ 2e-7, while offers that are never made or never picked still fail every run.
    runs = 4
    for _ in range(runs):
        acc, result = _run(eps=1.0, k=k, work=work)
        _assert_spent_exactly(acc)
        selections = [c for c in acc.charges if c.mechanism.startswith("exponential")]
        assert selections and all(c.detail["sensitivity"] == k * max(weights.values()) for c in selections)
        grouped = [m for m in result.measurements if m.groups is not None]
        if grouped:
            break
    assert grouped, f"no round measured on groups in {runs} runs"
    gauss = [c for c in acc.charges if c.mechanism == "discrete Gaussian"]
    assert len(gauss) == len(result.measurements)  # one draw per measurement, none for the groups' choice
    for m, c in zip(result.measurements, gauss):
        assert c.detail["sensitivity_l2"] == k and c.rho == pytest.approx(k**2 / (2 * m.stddev**2), rel=1e-9)
        assert c.detail["clique"] == list(m.clique)
        if m.groups is not None:
            assert c.detail["groups"] == [int(g.max()) + 1 for g in m.groups] == list(m.values.shape)
            assert [len(g) for g in m.groups] == [SIZES[NAMES.index(n)] for n in m.clique]
    logged = [r for r in result.rounds if "groups" in r]
    assert [r["groups"] for r in logged] == [[int(g.max()) + 1 for g in m.groups] for m in grouped]
    # the rounds' candidate counts include the grouped offers (one per pair that fits, beside the whole pair)
    assert any(r["candidates"] > len(aim.downward_closure(work, NAMES)) for r in result.rounds[1:])


def test_no_grouped_offers_when_the_rounds_are_not_noisy(monkeypatch):
    """Grouped offers are switched off for the whole run when a typical pair is measured with little noise
    (median_pair_noise below GROUPED_SIGNAL): then every round selects among the whole cliques only."""
    monkeypatch.setattr(aim, "GROUP_NOISE_TVD", (1e-9,))  # every pair would be offered on groups if the switch were on
    monkeypatch.setattr(aim, "GROUPED_SIGNAL", math.inf)
    work = aim.workload(None, NAMES)
    acc, result = _run(eps=1.0, work=work)
    assert all(m.groups is None for m in result.measurements) and not any("groups" in r for r in result.rounds)
    assert all(r["candidates"] <= len(aim.downward_closure(work, NAMES)) for r in result.rounds[1:])
    _assert_spent_exactly(acc)


def test_grouped_measurement_adds_noise_once_per_group_cell():
    """The cells are summed before the noise: noisy - Q exact has scale sigma per grouped cell (not sigma sqrt(m),
    m = 100 cells per group here). Five measurements of a 10 x 10 grouped cube give n = 500 residuals; their mean
    square over sigma^2 is a chi-square mean, 1 +- sqrt(2 / n) = 0.063 per standard deviation. The bounds 1 +- 6 sd
    (0.62, 1.38) fail a correct sampler with probability < 1e-8 and any scale off by sqrt(2) or more (mean 2 or 0.5)
    almost surely. (OpenDP's sampler takes no seed; the exact cube is fixed, seed 5.)"""
    rng = np.random.default_rng(5)
    exact = rng.integers(0, 40, size=(100, 100))
    pick = aim.Candidate(("c0", "c1"), (np.arange(100) // 10, np.arange(100) % 10))
    acc = ZCDPAccountant(50.0, 1e-9, aim.aim_plan())  # room for five draws of rho = 4 / 18
    sigma, z = 3.0, []
    for _ in range(5):
        m = aim.measure(pick, exact, sigma, 2, acc)
        assert m.values.shape == (10, 10) and m.groups is pick.groups and m.stddev == sigma
        z.extend(((m.values - pick.cube(exact)) / sigma).ravel().tolist())
    sd = math.sqrt(2 / len(z))
    assert 1 - 6 * sd < float(np.mean(np.square(z))) < 1 + 6 * sd
    assert [c.rho for c in acc.charges] == pytest.approx([4 / (2 * sigma**2)] * 5, rel=1e-9)
    assert all(c.detail["groups"] == [10, 10] and c.detail["sensitivity_l2"] == 2 for c in acc.charges)


def test_tiny_model_cap_keeps_to_covered_cliques_and_the_budget():
    acc, result = _run(eps=1.0, max_cells=1)
    assert all(len(r["clique"][0]) == 1 for r in result.rounds[1:])  # no pair fits: 1-way cliques are re-measured
    _assert_spent_exactly(acc)


def test_single_column_spends_everything_on_its_one_way():
    dom = TableDomain(DOM.columns[:1])
    work = aim.workload(None, ["c0"])
    acc = ZCDPAccountant(1.0, 1e-9, aim.aim_plan())
    result = aim.run_aim({("c0",): np.array([10, 20, 30, 40])}, dom, 1, acc, work)
    assert len(result.measurements) == 1 and result.rounds[0]["last"]
    _assert_spent_exactly(acc)


def test_three_way_workload_runs_and_measures_within_its_closure():
    work = aim.workload(WorkloadSpec(three_way=["c0", "c1", "c3"]), NAMES)
    acc, result = _run(eps=10.0, work=work)
    closure = set(aim.downward_closure(work, NAMES))
    assert all(tuple(r["clique"][0]) in closure for r in result.rounds[1:])
    _assert_spent_exactly(acc)


# ----------------------------------------------------------------------------------------------------------------------
# Inference and the warm-started fit


def _brute_joint(potentials, sizes, total):
    names = list(sizes)
    logp = np.zeros([sizes[n] for n in names])
    for c, t in potentials.items():
        logp = logp + NamedTable(c, t).aligned(tuple(names))
    p = np.exp(logp - logp.max())
    return NamedTable(tuple(names), p * total / p.sum())


@pytest.mark.parametrize("cliques", [
    [("c0", "c1"), ("c1", "c2"), ("c2", "c3"), ("c3", "c4")],  # a chain: pairs and triples walk along it
    [("c0", "c1", "c2"), ("c2", "c4"), ("c1", "c3")],
    [("c0", "c1"), ("c2",), ("c3", "c4")],  # three components: independent across them
])
def test_calibrated_marginals_match_the_joint(cliques):
    """The numpy clique marginal of a model (one calibration) equals the brute-force joint's on every clique of 1 to
    3 columns, across unconnected parts of the tree too (deterministic: exact up to float rounding)."""
    sizes = dict(zip(NAMES, SIZES))
    rng = np.random.default_rng(1)
    potentials = {c: rng.normal(size=[sizes[n] for n in c]) for c in cliques}
    model = PGMModel.from_tables({c: NamedTable(c, t) for c, t in potentials.items()}, sizes, 1000.0, list(NAMES))
    joint = _brute_joint(potentials, sizes, 1000.0)
    for size in (1, 2, 3):
        for c in itertools.combinations(NAMES, size):
            for order in (c, c[::-1]):  # axes follow the clique's order
                np.testing.assert_allclose(model.clique_marginal(order), joint.project(order).values,
                                           rtol=1e-9, atol=1e-9)


def test_fit_lowers_the_loss_and_warm_starts():
    sizes = dict(zip(NAMES, SIZES))
    cubes = _cubes([("c0",), ("c1",), ("c0", "c1"), ("c1", "c2")])
    ms = [NoisyMarginal(c, cubes[c].astype(float), 1.0, "test", 0.0) for c in cubes]
    cold = aim._fit(ms, sizes, 5000.0, None, 0)
    fitted = aim._fit(ms, sizes, 5000.0, None, 300)
    assert 0 < fitted.iters <= 300  # a cap; the fit may stop earlier on its convergence rule
    err = lambda m: np.abs(m.clique_marginal(("c0", "c1")) - cubes[("c0", "c1")]).sum()  # noqa: E731
    # the independent start misses the c0-c1 dependence by thousands; 300 steps bring it within 2% of the table
    assert err(cold) > 2000 and err(fitted) < 100
    # the cold start is the independent model of the 1-way measurements: its 1-way marginals are theirs
    np.testing.assert_allclose(cold.clique_marginal(("c0",)), cubes[("c0",)] * 5000.0 / cubes[("c0",)].sum(),
                               rtol=1e-9)
    warm = aim._fit(ms, sizes, 5000.0, fitted, 0)
    np.testing.assert_allclose(warm.clique_marginal(("c0", "c1")), fitted.clique_marginal(("c0", "c1")), rtol=1e-9)
    assert warm.step == fitted.step  # the step size carries over
    # a new clique starts at zero: adding a measurement leaves the warm model's marginals where they were
    more = ms + [NoisyMarginal(("c2", "c3"), _cubes([("c2", "c3")])[("c2", "c3")].astype(float), 1.0, "test", 0.0)]
    grown = aim._fit(more, sizes, 5000.0, fitted, 0)
    np.testing.assert_allclose(grown.clique_marginal(("c0", "c1")), fitted.clique_marginal(("c0", "c1")), rtol=1e-9)


# ----------------------------------------------------------------------------------------------------------------------
# The whole job


def test_aim_job_writes_the_round_log(small_parquet, tmp_path):
    from dpbeam.job import run_job

    base = small_spec(small_parquet, str(tmp_path / "out"))
    spec = parse_spec({**base, "privacy": {**base["privacy"], "epsilon": 5.0},
                       "synthesizer": {"method": "aim", "iters": 200}})
    statement = run_job(spec)
    art = MeasurementsArtifact.read(spec.output.resolved_measurements_uri)
    with open(os.path.join(spec.output.resolved_measurements_uri, "rounds.json")) as f:
        rounds = json.load(f)["rounds"]
    assert len(rounds) >= 2 and rounds[-1]["last"] and len(art.rounds) == len(rounds)
    assert [m.stddev for m in art.measurements[5:]] == pytest.approx([r["sigma"] for r in rounds[1:]])
    assert art.manifest["method"] == "aim" and len(art.manifest["workload"]) == 10
    assert statement["epsilon"] <= 5.0 and art.privacy["stages"]["aim"]["rho_charged"] == pytest.approx(
        art.privacy["rho"], rel=1e-9)
    assert pq.read_table(spec.output.uri).num_rows > 0


def test_k_rule_reads_the_aim_plan(users_parquet, tmp_path):
    """max_rows_per_unit: auto with method aim: the k rule's noise per row is a round's first measurement, at k = 1."""
    from dpbeam.job import _marginal_noise_per_row, plan_job

    base = small_spec(users_parquet, str(tmp_path / "out"), unit={"column": "user_id"}, max_rows_per_unit="auto",
                      discovery_fraction=0.1)
    plan = plan_job(parse_spec({**base, "synthesizer": {"method": "aim"}}))
    sigma, _ = _marginal_noise_per_row(plan)
    assert sigma == pytest.approx(gaussian_sigma(aim.first_measure_rho(plan.accountant.allotted("aim"), 5), 1.0))
