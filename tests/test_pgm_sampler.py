"""The PGM engine's numpy sampler and inference: rows follow the model, the rounding is stratified, the seed decides.

Statistical checks use fixed seeds. A cell of probability p estimated from n independent rows scatters by
sqrt(p (1 - p) / n); every bound below is 5 of those (plus 1/n for the rounding), so a correct sampler passes
whatever the seed (per-cell false alarm ~6e-7), while a sampler off by a few percent of a cell fails.
"""

from __future__ import annotations

import numpy as np
import pytest

from dpbeam.synth.forward import ForwardSampler
from dpbeam.synth.calibrate import NamedTable
from dpbeam.synth.pgm import PGMModel

SIZES = {"a": 4, "b": 3, "c": 5}


def _chain() -> tuple[dict, np.ndarray]:
    """A chain a - b - c: tables on (a, b) and (b, c) that agree on b, and the joint p(a, b) p(c | b)."""
    rng = np.random.default_rng(1)
    ab = rng.dirichlet(np.ones(12)).reshape(4, 3)
    c_given_b = rng.dirichlet(np.ones(5) * 0.5, size=3)
    bc = ab.sum(0)[:, None] * c_given_b
    joint = ab[:, :, None] * c_given_b[None, :, :]
    return {("a", "b"): ab, ("b", "c"): bc}, joint


def _within_sampling_error(empirical: np.ndarray, p: np.ndarray, n: int) -> bool:
    # 5 standard deviations of a cell's frequency, plus one row of rounding
    return bool(np.all(np.abs(empirical - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1 / n))


def _freq(codes: np.ndarray, cols: list[int], shape: tuple[int, ...]) -> np.ndarray:
    flat = np.ravel_multi_index(tuple(codes[:, j].astype(np.int64) for j in cols), shape)
    return np.bincount(flat, minlength=int(np.prod(shape))).reshape(shape) / len(codes)


@pytest.mark.parametrize("method", ["round", "sample"])
def test_rows_follow_the_joint_distribution(method):
    tables, joint = _chain()
    sampler = ForwardSampler(["a", "b", "c"], SIZES, tables, ["a", "b", "c"])
    n = 200_000
    codes = sampler.sample(n, np.random.default_rng(7), method)
    assert codes.shape == (n, 3) and codes.max(axis=0).tolist() <= [3, 2, 4]
    # the 3-way joint, not only the measured pairs: a and c are independent given b, in the sample too
    assert _within_sampling_error(_freq(codes, [0, 1, 2], (4, 3, 5)), joint, n)


def test_a_cell_off_by_ten_percent_is_caught():
    """The bound above has teeth: for the largest cell (p ~ 0.07, 5 sigma ~ 0.0029, 4% of p) the same check rejects a
    joint that is 10% off there, and a joint that drops the a - c link through b (a and c independent)."""
    tables, joint = _chain()
    codes = ForwardSampler(["a", "b", "c"], SIZES, tables, ["a", "b", "c"]).sample(200_000, np.random.default_rng(7))
    freq = _freq(codes, [0, 1, 2], (4, 3, 5))
    wrong = joint.copy()
    wrong[np.unravel_index(np.argmax(joint), joint.shape)] *= 1.10
    assert not _within_sampling_error(freq, wrong / wrong.sum(), 200_000)
    independent = joint.sum((1, 2))[:, None, None] * joint.sum(0)[None, :, :]
    assert not _within_sampling_error(freq, independent, 200_000)


def test_rounding_is_stratified_within_each_parent_cell():
    """With method="round", among the m rows of a parent cell the count of each code is within 2 of m p(code | cell)
    (each cumulative count is within 1 of m F); independent draws would scatter by sqrt(m p (1 - p)) ~ 30 here."""
    tables, _ = _chain()
    sampler = ForwardSampler(["a", "b", "c"], SIZES, tables, ["c", "b", "a"])  # drawn in reverse: a, then b | a, c | b
    assert [s.parents for s in sampler.steps] == [(), (0,), (1,)]
    codes = sampler.sample(100_000, np.random.default_rng(3), "round")
    a_counts = np.bincount(codes[:, 0], minlength=4)
    assert np.all(np.abs(a_counts - 100_000 * tables[("a", "b")].sum(1)) < 2)
    ab = tables[("a", "b")]
    bc = tables[("b", "c")]
    for a in range(4):
        rows = codes[codes[:, 0] == a]
        b_counts = np.bincount(rows[:, 1], minlength=3)
        assert np.all(np.abs(b_counts - len(rows) * ab[a] / ab[a].sum()) < 2)
    for b in range(3):
        rows = codes[codes[:, 1] == b]
        c_counts = np.bincount(rows[:, 2], minlength=5)
        assert np.all(np.abs(c_counts - len(rows) * bc[b] / bc[b].sum()) < 2)


def test_seeded_and_leaves_numpy_global_state_alone():
    tables, _ = _chain()
    sampler = ForwardSampler(["a", "b", "c"], SIZES, tables, ["a", "b", "c"])
    state = np.random.get_state()[1].copy()
    one = sampler.sample(5000, np.random.default_rng(11))
    assert np.array_equal(one, sampler.sample(5000, np.random.default_rng(11)))
    assert not np.array_equal(one, sampler.sample(5000, np.random.default_rng(12)))
    assert np.array_equal(state, np.random.get_state()[1])


def test_zero_rows_and_an_unreachable_parent_cell():
    tables, _ = _chain()
    tables[("a", "b")][:, 2] = 0.0  # b = 2 never happens: its c | b row has no mass
    tables[("b", "c")][2] = 0.0
    sampler = ForwardSampler(["a", "b", "c"], SIZES, tables, ["a", "b", "c"])
    assert sampler.sample(0, np.random.default_rng(0)).shape == (0, 3)
    codes = sampler.sample(20_000, np.random.default_rng(0))
    assert not np.any(codes[:, 1] == 2)


def test_calibration_matches_brute_force():
    """Log-potentials on (a, b), (c, b) and (c,): the numpy clique-tree marginals, and the clique marginal of any
    clique read from them, equal the brute-force joint's (exact up to float rounding)."""
    rng = np.random.default_rng(5)
    pots = [NamedTable(("a", "b"), rng.normal(size=(4, 3))), NamedTable(("c", "b"), rng.normal(size=(5, 3))),
            NamedTable(("c",), rng.normal(size=5))]
    joint = np.exp(pots[0].values[:, :, None] + pots[1].values.T[None, :, :] + pots[2].values[None, None, :])
    joint *= 1000 / joint.sum()
    sizes = {n: SIZES[n] for n in ("a", "b", "c")}
    model = PGMModel.from_tables({t.names: t for t in pots}, sizes, 1000.0, ["a", "b", "c"])
    np.testing.assert_allclose(model.clique_marginal(("a", "b")), joint.sum(2), rtol=1e-10)
    np.testing.assert_allclose(model.clique_marginal(("b", "c")), joint.sum(0), rtol=1e-10)
    np.testing.assert_allclose(model.clique_marginal(("c", "a")), joint.sum(1).T, rtol=1e-10)  # across cliques
    np.testing.assert_allclose(model.clique_marginal(("c", "b", "a")), joint.transpose(2, 1, 0), rtol=1e-10)
    with pytest.raises(ValueError, match="not columns of the model"):
        model.clique_marginal(("a", "z"))


def test_fixed_growth_applies_to_every_accepted_step():
    """``growth`` replaces the doubling-then-1.01 rule: after n steps with a accepted and r rejected, the step is
    alpha0 * growth^a * 0.5^r (deterministic)."""
    from dpbeam.synth.mirror import Measured, MirrorDescent, Problem

    rng = np.random.default_rng(2)
    ms = [Measured(("a", "b"), rng.uniform(0, 100, 12), 1.0), Measured(("b", "c"), rng.uniform(0, 100, 15), 1.0)]
    problem = Problem(["a", "b", "c"], {n: SIZES[n] for n in ("a", "b", "c")}, ms)
    state = MirrorDescent.start(problem, 600.0, growth=1.1)
    alpha0, accepted, rejected = state.alpha, 0, 0
    for _ in range(20):
        before = state.loss
        state.step()
        accepted += state.loss != before
        rejected += state.loss == before
    assert accepted > 0
    assert state.alpha == pytest.approx(alpha0 * 1.1**accepted * 0.5**rejected, rel=1e-12)


def test_accelerated_fit_never_raises_the_loss_and_beats_plain_steps():
    """Nesterov momentum with restarts (deterministic): the loss never rises from one step to the next, and at the
    same number of inferences (400: 200 accelerated steps) it ends lower than plain mirror descent on an
    ill-conditioned problem (a chain of strongly dependent pairs measured at sigma 0.5 and 20, N = 20,000)."""
    from dpbeam.synth.mirror import Measured, MirrorDescent, Problem

    rng = np.random.default_rng(4)
    n = 20_000
    a = rng.integers(0, 4, n)
    b = (a + (rng.random(n) < 0.1)) % 3
    c = (2 * b + rng.integers(0, 2, n)) % 5
    sizes = {n_: SIZES[n_] for n_ in ("a", "b", "c")}
    ab = np.bincount(a * 3 + b, minlength=12).astype(float)
    bc = np.bincount(b * 5 + c, minlength=15).astype(float)
    problem = Problem(["a", "b", "c"], sizes, [Measured(("a", "b"), ab, 0.5), Measured(("b", "c"), bc, 20.0)])
    plain = MirrorDescent.start(problem, float(n))
    plain.run(400)
    fast = MirrorDescent.start(problem, float(n))
    losses = [fast.loss]
    for _ in range(200):
        fast.accelerated_step()
        losses.append(fast.loss)
    assert all(y <= x for x, y in zip(losses, losses[1:]))
    assert fast.loss < plain.loss


def _artifact(n: int = 4000, seed: int = 0):
    from dpbeam.domain import BinnedDomain, TableDomain
    from dpbeam.marginals import count_cliques
    from dpbeam.measurements import MeasurementsArtifact
    from dpbeam.privacy.accountant import ZCDPAccountant
    from dpbeam.privacy.mst import mst_plan, required_cliques, run_mst

    sizes = [4, 3, 5, 2]
    dom = TableDomain(tuple(BinnedDomain(f"c{i}", "int64", False, edges=tuple(range(s + 1)))
                            for i, s in enumerate(sizes)))
    rng = np.random.default_rng(seed)
    c0 = rng.integers(0, 4, n)
    codes = np.stack([c0, (c0 + rng.integers(0, 2, n)) % 3, (c0 + rng.integers(0, 3, n)) % 5, c0 % 2], 1)
    cubes = count_cliques(codes.astype(np.uint8), dom, required_cliques(dom.names))
    result = run_mst(cubes, dom, 1, ZCDPAccountant(2.0, 1e-9, mst_plan(len(sizes))))
    return MeasurementsArtifact(dom, result.compression, result.measurements, {}, {})


def test_pgm_rows_match_the_models_pair_marginals():
    """Rows drawn from a fitted model agree with the model's own 2-way marginals (mbi's variable elimination) within
    sampling error, for every pair, measured or not."""
    from itertools import combinations

    from dpbeam.synth import pgm

    artifact = _artifact()
    model = pgm.fit(artifact, iters=100)
    n = 100_000
    codes = model.sample(n, seed=3)
    sizes = artifact.model_sizes
    for i, j in combinations(range(len(model.names)), 2):
        a, b = model.names[i], model.names[j]
        p = model.marginal((a, b))
        assert _within_sampling_error(_freq(codes, [i, j], (sizes[a], sizes[b])), p / p.sum(), n), (a, b)


def test_fit_stops_once_the_loss_levels_off_and_warm_starts_keep_the_model():
    from dpbeam.measurements import MeasurementsArtifact
    from dpbeam.synth import pgm

    artifact = _artifact()
    stopped = pgm.fit(artifact, iters=3000)
    full = pgm.fit(artifact, iters=300, converge=False)
    assert full.iters == 300
    assert stopped.iters < 3000  # a loss that falls by < sqrt(N / 2) per 50 iterations, twice, ends the fit
    # a warm start from a model of a subset of the measurements begins at that model exactly
    subset = MeasurementsArtifact(artifact.domain, artifact.compression,
                                  tuple(m for m in artifact.measurements if len(m.clique) == 1), {}, {})
    small = pgm.fit(subset, iters=100)
    problem = pgm.problem_of(artifact)
    start = pgm._start(small, problem)
    assert start is not None and any(np.abs(p).max() > 0 for p in start)
    begun = pgm.PGMModel.from_tables({c: NamedTable(c, p) for c, p in zip(problem.cliques, start)}, problem.sizes,
                                     small.total, small.names)
    for n in small.names:
        np.testing.assert_allclose(_numpy_marginal(begun, (n,)), _numpy_marginal(small, (n,)), rtol=1e-9)


def _numpy_marginal(model, clique: tuple[str, ...]) -> np.ndarray:
    home = next(c for c in model.tree_marginals if set(clique) <= set(c))
    return NamedTable(home, model.tree_marginals[home]).project(clique).values


def _loopy_model():
    """Log-potentials on a 4-cycle a-b-c-d-a plus a chord-free tail d-e: the clique tree must triangulate it."""
    from dpbeam.synth.calibrate import NamedTable as T

    sizes = {"a": 3, "b": 4, "c": 2, "d": 5, "e": 3}
    rng = np.random.default_rng(8)
    pairs = [("a", "b"), ("b", "c"), ("c", "d"), ("a", "d"), ("d", "e")]
    tables = {p: T(p, rng.normal(scale=1.5, size=(sizes[p[0]], sizes[p[1]]))) for p in pairs}
    names = list(sizes)
    grids = np.meshgrid(*[np.arange(sizes[n]) for n in names], indexing="ij")
    logp = sum(t.values[tuple(grids[names.index(n)] for n in t.names)] for t in tables.values())
    joint = np.exp(logp - logp.max())
    return sizes, names, tables, joint * (777.0 / joint.sum())


def test_clique_tree_inference_matches_brute_force_on_a_loopy_model():
    """The numpy inference of the fit (probability-space HUGIN on the tree of maximal cliques) gives every clique's
    marginal of the brute-force joint, on a model whose graph has a cycle, and the sampler follows it."""
    from dpbeam.synth import pgm

    sizes, names, tables, joint = _loopy_model()
    model = pgm.PGMModel.from_tables(tables, sizes, 777.0, names)
    assert sorted(len(c) for c in model.tree.cliques) == [2, 3, 3]  # the cycle gets a chord: two triangles, and d-e
    for clique, table in model.tree_marginals.items():
        keep = [names.index(n) for n in clique]
        want = joint.sum(axis=tuple(i for i in range(len(names)) if i not in keep))
        np.testing.assert_allclose(table, np.transpose(want, np.argsort(np.argsort(keep))), rtol=1e-9)
    n = 200_000
    codes = model.sample(n, seed=4)
    full = _freq(codes, list(range(5)), tuple(sizes[x] for x in names))
    assert _within_sampling_error(full, joint / joint.sum(), n)


def test_fit_reaches_mbis_optimum():
    """The numpy mirror descent and mbi's (JAX) minimise the same loss: run to convergence on a small artifact, their
    marginals agree to 2e-4 of the total on every pair (the loss is convex in the marginals, so the optimum's
    marginals are unique). Measured: they agree to 3e-6; weighting the 1-way measurements as if their sigma were 3x,
    or dropping them, moves the optimum by 2.3e-3 and 3.3e-3 of the total, which this bound catches."""
    from dpbeam.synth import _jax  # noqa: F401
    import mbi
    from mbi import estimation, marginal_loss

    from dpbeam.synth import pgm

    artifact = _artifact()
    ours = pgm.fit(artifact, iters=3000, converge=False)
    domain = pgm._mbi_domain(artifact)
    measurements = [mbi.LinearMeasurement(np.asarray(m.values, dtype=np.float64).ravel(), m.clique, m.stddev)
                    for m in artifact.measurements]
    loss_fn = marginal_loss.from_linear_measurements(measurements, domain)
    theirs = estimation.MirrorDescent().estimate(domain, loss_fn, known_total=artifact.estimated_total(), iters=3000)
    total = artifact.estimated_total()
    pairs = [(x, y) for i, x in enumerate(ours.names) for y in ours.names[i + 1:]]
    mine = ours.pair_marginals(pairs)
    for pair in pairs:
        ref = np.asarray(theirs.project(pair).datavector(flatten=False))
        assert np.abs(mine[pair] - ref).max() <= 2e-4 * total, pair


def test_rows_do_not_depend_on_the_number_of_threads():
    from dpbeam.synth import forward, pgm

    model = pgm.fit(_artifact(), iters=100)
    n = forward.BLOCK_ROWS + 1000  # two blocks
    one = model.sample(n, seed=9, threads=1)
    assert np.array_equal(one, model.sample(n, seed=9, threads=2))
    assert not np.array_equal(one, model.sample(n, seed=10, threads=2))


def test_generated_rows_do_not_depend_on_threads_or_lookahead(monkeypatch):
    """Chunks are prepared on worker threads ahead of the writer, each from its own seed: the rows handed to the
    writer are the same with one worker and no lookahead as with several, and another seed gives other rows."""
    import pyarrow as pa

    from dpbeam.synth import forward, generate, pgm

    artifact = _artifact()
    model = pgm.fit(artifact, iters=50)

    def rows(seed: int = 5) -> pa.Table:
        return pa.concat_tables(generate._chunks(model, artifact, 25_000, seed, chunk_rows=4_000))

    monkeypatch.setattr(generate, "LOOKAHEAD", 1)
    monkeypatch.setattr(forward, "default_threads", lambda: 1)
    serial = rows()
    monkeypatch.setattr(generate, "LOOKAHEAD", 3)
    monkeypatch.setattr(forward, "default_threads", lambda: 3)
    assert serial.num_rows == 25_000
    assert serial.equals(rows())
    assert not serial.equals(rows(seed=6))
