"""The torch synthesis engine on CPU with tiny sizes: the Gram-matrix loss, fitting, weights, 3-way cliques, sampling,
the engine choice, and the import boundary."""

from __future__ import annotations

import json
import os
from itertools import combinations

import numpy as np
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from conftest import small_spec  # noqa: E402
from dpbeam.domain import BinnedDomain, TableDomain  # noqa: E402
from dpbeam.errors import SpecError  # noqa: E402
from dpbeam.job import run_job  # noqa: E402
from dpbeam.marginals import count_cliques  # noqa: E402
from dpbeam.measurements import MeasurementsArtifact, NoisyMarginal  # noqa: E402
from dpbeam.spec import parse_spec  # noqa: E402
from dpbeam.synth import relaxed, synthesize, torch_engine  # noqa: E402

SIZES = [3, 4, 2, 5]


def _domain(sizes) -> TableDomain:
    return TableDomain(tuple(BinnedDomain(f"c{j}", "int64", False, edges=tuple(range(s + 1)))
                             for j, s in enumerate(sizes)))


def _codes(n: int, seed: int = 0) -> np.ndarray:
    """Correlated columns of sizes SIZES."""
    rng = np.random.default_rng(seed)
    x0 = rng.integers(0, 3, n)
    x1 = (x0 + rng.integers(0, 2, n)) % 4
    x2 = (x1 > 1).astype(np.int64) ^ (rng.random(n) < 0.1)
    x3 = (x0 + x1 + rng.integers(0, 2, n)) % 5
    return np.stack([x0, x1, x2, x3], axis=1)


def _artifact(codes, cliques, sigma=1.0, noise=0.0, weights=None, seed=0) -> MeasurementsArtifact:
    """Measurements of ``cliques`` over ``codes``: values = w * counts + N(0, noise^2), labelled with scale sigma."""
    domain = _domain(SIZES)
    cubes = count_cliques(codes, domain, cliques)
    rng = np.random.default_rng(seed)
    out = []
    for c in cliques:
        w = (weights or {}).get(c)
        y = (cubes[c] if w is None else w * cubes[c]) + rng.normal(0, noise, cubes[c].shape)
        out.append(NoisyMarginal(c, y.astype(np.float64), sigma, "test", 0.0, weights=w))
    return MeasurementsArtifact(domain, {}, tuple(out), {})


def _naive_loss(logits, artifact) -> torch.Tensor:
    """One marginal at a time, float64: softmax per column, einsum over the rows of the clique's columns."""
    names, sizes = artifact.domain.names, artifact.model_sizes
    k = logits.shape[0]
    scale = artifact.estimated_total() / k
    probs = {n: torch.softmax(logits[:, j, : sizes[n]].double(), dim=-1) for j, n in enumerate(names)}
    total = torch.zeros((), dtype=torch.float64)
    for m in artifact.measurements:
        axes = "abcd"[: len(m.clique)]
        marg = torch.einsum(",".join(f"z{x}" for x in axes) + f"->{axes}", *(probs[n] for n in m.clique)) * scale
        w = torch.ones(marg.shape, dtype=torch.float64) if m.weights is None else torch.as_tensor(m.weights)
        total = total + (((w * marg - torch.as_tensor(m.values)) / m.stddev) ** 2).sum()
    return total


ALL = [(n,) for n in ("c0", "c1", "c2", "c3")] + list(combinations(("c0", "c1", "c2", "c3"), 2))


def test_gram_loss_and_gradient_equal_the_naive_ones():
    weights = {("c1",): np.array([1.0, 1.0, 1.0, 0.5]), ("c0", "c3"): np.linspace(0.5, 1.5, 15).reshape(3, 5)}
    cliques = ALL + [("c0", "c1", "c3"), ("c1", "c2", "c3"), ("c0", "c2", "c3")]
    art = _artifact(_codes(300), cliques, sigma=3.0, noise=3.0, weights=weights)
    problem = relaxed.build_problem(art, "cpu", 40)
    # three 3-way shapes, (3, 4, 5), (4, 2, 5) and (3, 2, 5): three groups; sizes differ, so columns are padded
    assert len(problem.wide) == 3 and problem.keep is not None
    logits = torch.randn(40, 4, 5, generator=torch.Generator().manual_seed(1)).requires_grad_()
    fast = relaxed.loss(logits, problem)
    slow = _naive_loss(logits, art)
    assert fast.item() == pytest.approx(slow.item(), rel=1e-5)
    (g_fast,) = torch.autograd.grad(fast, logits)
    (g_slow,) = torch.autograd.grad(slow, logits)
    assert torch.allclose(g_fast, g_slow, rtol=1e-4, atol=1e-4 * g_slow.abs().max().item())


def test_equal_shape_wide_cliques_are_batched():
    codes = np.stack([_codes(200)[:, 0]] * 4, axis=1) % 2
    cliques = [("c0", "c1", "c2"), ("c0", "c1", "c3"), ("c1", "c2", "c3")]
    domain = TableDomain(tuple(BinnedDomain(f"c{j}", "int64", False, edges=(0, 1, 2)) for j in range(4)))
    cubes = count_cliques(codes, domain, cliques)
    art = MeasurementsArtifact(domain, {}, tuple(NoisyMarginal(c, cubes[c].astype(float), 1.0, "t", 0.0)
                                                 for c in cliques), {})
    problem = relaxed.build_problem(art, "cpu", 16)
    assert len(problem.wide) == 1 and problem.keep is None and problem.pad is None


def test_fit_recovers_noise_free_marginals_with_3way():
    # Noise-free measurements (the limit of tiny noise), sigma = 1 count. K = N, so the real rows themselves (one-hot)
    # are a relaxed table of loss 0: the minimum is 0. Threshold: if the loss is at most L, a marginal's residuals
    # r satisfy sum r^2 <= L, so by Cauchy-Schwarz its L1 error is at most sqrt(E L) for E cells (E <= 30 here:
    # the 3-way clique 3 x 4 x 5 is 60, but it has its own budget below); with L <= 40 that is sqrt(30 * 40) ~ 35
    # counts of N = 500, a TVD of at most 0.035. The 3-way marginal (60 cells): sqrt(60 * 40) / 1000 ~ 0.049.
    codes = _codes(500)
    cliques = ALL + [("c0", "c1", "c3")]
    art = _artifact(codes, cliques)
    seen = []
    model = torch_engine.fit(art, steps=600, rows=500, lr=0.1, seed=0, device="cpu", stop_at=None,
                             progress=lambda s, v: seen.append((s, v)), report_every=100)
    assert [s for s, _ in seen] == [100, 200, 300, 400, 500, 600]
    assert seen[0][1] > 10 * model.loss  # the loss fell
    assert model.loss <= 40, model.loss
    cubes = count_cliques(codes, art.domain, cliques)
    for c in cliques:
        tvd = 0.5 * np.abs(model.marginal(c) - cubes[c]).sum() / 500
        assert tvd <= (0.049 if len(c) == 3 else 0.035), (c, tvd)


def test_fit_stops_at_the_noise_level():
    art = _artifact(_codes(2000), ALL, sigma=5.0, noise=5.0)
    model = torch_engine.fit(art, steps=500, rows=200, seed=0, device="cpu")
    assert model.steps < 500 and model.steps % torch_engine.CHECK_EVERY == 0
    # the loss before the last step was at most one per measured entry; one more Adam step only lowers it
    assert model.loss <= torch_engine.STOP_AT * model.measured_entries


def test_weights_are_honored():
    # MST's merged cell: the measured vector is w * marginal. The fit must match marginal = values / w, not values.
    codes = _codes(500)
    w = np.array([1.0, 1.0, 0.25])
    art = _artifact(codes, [("c0",), ("c1",), ("c0", "c1")], weights={("c0",): w})
    model = torch_engine.fit(art, steps=300, rows=500, lr=0.1, seed=0, device="cpu", stop_at=None)
    truth = np.bincount(codes[:, 0], minlength=3)
    fitted = model.marginal(("c0",))
    # Honoring w, the measurements are consistent and the fit lands within a count of the truth (0.05 here); reading
    # the same values as unweighted (w ignored) leaves the merged cell 84 counts low. 5 counts separates the two.
    assert np.abs(fitted - truth).max() < 5, (fitted, truth)


def test_fit_is_reproducible_for_a_seed():
    art = _artifact(_codes(300), ALL, sigma=2.0, noise=2.0)
    a = torch_engine.fit(art, steps=30, rows=50, seed=3, device="cpu", stop_at=None)
    b = torch_engine.fit(art, steps=30, rows=50, seed=3, device="cpu", stop_at=None)
    c = torch_engine.fit(art, steps=30, rows=50, seed=4, device="cpu", stop_at=None)
    assert torch.equal(a.probs, b.probs) and not torch.equal(a.probs, c.probs)
    assert a.device == "cpu" and a.engine == "torch"


def _one_hot_model(rows: np.ndarray) -> torch_engine.TorchModel:
    offsets = tuple(int(x) for x in np.concatenate([[0], np.cumsum(SIZES)[:-1]]))
    probs = torch.zeros(len(rows), sum(SIZES))
    for j, o in enumerate(offsets):
        probs[torch.arange(len(rows)), torch.as_tensor(o + rows[:, j])] = 1.0
    return torch_engine.TorchModel(probs, ["c0", "c1", "c2", "c3"], tuple(SIZES), offsets, float(len(rows)), "cpu",
                                   0.0, 0, 1)


def test_sampling_rounds_each_row_and_stratifies():
    rows = _codes(37, seed=5)
    model = _one_hot_model(rows)  # one-hot rows round to themselves, zero-probability bins are never drawn
    key = lambda a: sorted(map(tuple, a))  # noqa: E731
    assert key(model.sample(37, seed=1)) == key(rows)
    # 2 * 37 + 5 rows: every relaxed row twice, five of them three times
    out = model.sample(79, seed=1)
    counts = {r: key(out).count(r) for r in set(key(out))}
    expected = {r: key(rows).count(r) for r in set(key(rows))}
    extra = sum(counts[r] - 2 * expected[r] for r in expected)
    assert set(counts) == set(expected) and extra == 5
    assert all(2 * expected[r] <= counts[r] <= 3 * expected[r] for r in expected)


def test_sample_shapes_codes_and_seeds():
    art = _artifact(_codes(400), ALL, sigma=2.0, noise=2.0)
    model = torch_engine.fit(art, steps=50, rows=64, seed=0, device="cpu")
    for n in (0, 10, 64, 1000):
        out = model.sample(n, seed=7)
        assert out.shape == (n, 4) and out.dtype == np.int64
        if n:
            assert out.min() >= 0 and (out.max(axis=0) < np.array(SIZES)).all()
    assert np.array_equal(model.sample(1000, seed=7), model.sample(1000, seed=7))
    assert not np.array_equal(model.sample(1000, seed=7), model.sample(1000, seed=8))
    # rows drawn from the relaxed table follow its marginals: 20,000 rows, a 5-cell 1-way marginal, sampling TVD
    # ~ sum sqrt(p (1 - p) / n) / 2 < 0.01
    big = model.sample(20_000, seed=1)
    for j, n in enumerate(model.names):
        p = model.marginal((n,))
        q = np.bincount(big[:, j], minlength=SIZES[j]) / 20_000
        assert 0.5 * np.abs(p / p.sum() - q).sum() < 0.02


def test_engine_choice(small_parquet, tmp_path, monkeypatch):
    spec = parse_spec(small_spec(small_parquet, str(tmp_path / "out")))
    spec = spec.model_copy(update={"synthesizer": spec.synthesizer.model_copy(update={"method": "mst"})})
    run_job(spec)
    art = MeasurementsArtifact.read(spec.output.resolved_measurements_uri)
    assert synthesize.choose_engine(art, "auto") == "pgm"
    assert synthesize.choose_engine(art, "torch") == "torch"
    monkeypatch.setattr(synthesize, "PGM_MAX_CELLS", 0)
    assert synthesize.choose_engine(art, "auto") == "torch"
    with pytest.raises(SpecError, match="engine torch"):
        synthesize.choose_engine(art, "pgm")
    with pytest.raises(SpecError, match="auto, pgm or torch"):
        synthesize.choose_engine(art, "gan")


def test_synthesize_with_torch_end_to_end(small_parquet, tmp_path):
    raw = small_spec(small_parquet, str(tmp_path / "out"))
    raw["synthesizer"] = {"method": "mst", "engine": "torch", "iters": 200}
    spec = parse_spec(raw)
    statement = run_job(spec)
    table = pq.read_table(spec.output.uri)
    assert abs(table.num_rows - 2000) < 100 and table.schema.names == list(raw["columns"])
    with open(os.path.join(spec.output.uri, "_release.json")) as f:
        release = json.load(f)
    assert release["synthesizer"]["engine"] == "torch" == statement["synthesizer"]["engine"]
    assert release["synthesizer"]["device"] in ("cpu", "cuda")
    assert 0 < release["synthesizer"]["steps"] <= 200
    again = synthesize.synthesize(spec.output.resolved_measurements_uri, str(tmp_path / "again"), rows=321, seed=2,
                                  engine="torch", iters=50)
    assert pq.read_table(tmp_path / "again").num_rows == 321 and again["synthesizer"]["engine"] == "torch"


def test_precision_options():
    with pytest.raises(ValueError, match="cuda"):
        with torch_engine.matmul_precision(torch.device("cpu"), "bf16"):
            pass
    with torch_engine.matmul_precision(torch.device("cpu"), "auto") as bf16:
        assert bf16 is False
