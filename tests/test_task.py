"""Task-guided synthesis (dpbeam.task): spec, accounting per unit, DP-SGD noise, the whole job, the guardrail."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from dpbeam.errors import BudgetError, SpecError  # noqa: E402
from dpbeam.privacy.accountant import (  # noqa: E402
    ComposedAccountant,
    composed_epsilon,
    epsilon_for,
    noise_multiplier_for,
    rdp_curve,
    rho_for,
)
from dpbeam.spec import parse_spec  # noqa: E402
from dpbeam.task.data import BoundedRows, FeatureLayout, group_by_unit, unit_examples  # noqa: E402
from dpbeam.task.guardrail import copied_columns  # noqa: E402
from dpbeam.task.model import build_net, init_net, read_task_model  # noqa: E402
from dpbeam.task.train import DPSGDParams, private_model, train_dpsgd, unit_losses  # noqa: E402


def task_table(n: int = 3000, seed: int = 0, units: int | None = None) -> pa.Table:
    """a: 5 categories; b: 0..9; y: 1 when b >= 5, flipped for 10% of rows; r: 10 b + a + noise (0..99)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, n)
    b = rng.integers(0, 10, n)
    y = ((b >= 5) ^ (rng.random(n) < 0.1)).astype(np.int64)
    r = np.clip(10 * b + a + rng.integers(0, 5, n), 0, 99)
    cols = {"a": pa.array([f"c{i}" for i in a]), "b": pa.array(b), "y": pa.array(y), "r": pa.array(r)}
    if units is not None:
        cols = {"user_id": pa.array(rng.integers(0, units, n)), **cols}
    return pa.table(cols, schema=pa.schema([pa.field(k, v.type, nullable=False) for k, v in cols.items()]))


def task_spec(source: str, out: str, task: dict | None = None, **privacy) -> dict:
    return {
        "name": "task",
        "source": {"uri": source},
        "privacy": {"epsilon": 4.0, "delta": 1e-6, **privacy},
        "columns": {
            "a": {"kind": "categorical", "values": [f"c{i}" for i in range(5)]},
            "b": {"kind": "integer", "bounds": [0, 9]},
            "y": {"kind": "integer", "bounds": [0, 1]},
            "r": {"kind": "integer", "bounds": [0, 99], "bins": 10},
        },
        "synthesizer": {"method": "mst", "iters": 200},
        "task": task if task is not None else {"target": "y", "kind": "classification", "sample_rate": 0.05,
                                                "epochs": 10},
        "output": {"uri": out},
        "seed": 1,
    }


@pytest.fixture
def task_parquet(tmp_path) -> str:
    path = tmp_path / "task.parquet"
    pq.write_table(task_table(), path)
    return str(path)


# ----------------------------------------------------------------------------------------------------------------------
# Spec


@pytest.mark.parametrize(
    "task, words",
    [
        ({"target": "nope", "kind": "classification"}, ["task.target", "nope"]),
        ({"target": "a", "kind": "regression"}, ["task.kind regression", "columns.a"]),
        ({"target": "y", "kind": "classification", "budget_share": 1.0}, ["task.budget_share"]),
        ({"target": "y", "kind": "classification", "sample_rate": 1e-6}, ["task", "steps", "task.epochs"]),
        ({"target": "y", "kind": "classify"}, ["task.kind"]),
    ],
)
def test_task_spec_errors_name_the_field(tmp_path, task, words):
    with pytest.raises(SpecError) as err:
        parse_spec(task_spec("x.parquet", str(tmp_path / "o"), task))
    for w in words:
        assert w in str(err.value)


def test_task_with_ledger_is_refused(tmp_path):
    data = {**task_spec("x.parquet", str(tmp_path / "o")), "ledger": {"uri": "sqlite://", "dataset": "d"}}
    with pytest.raises(SpecError, match="remove ledger, or remove task"):
        parse_spec(data)


def test_spec_hash_without_task_is_unchanged(tmp_path):
    """Adding the task section did not change the hash of specs without one (ledgers and statements pin it)."""
    import hashlib

    data = task_spec("x.parquet", str(tmp_path / "o"))
    del data["task"]
    spec = parse_spec(data)
    dump = spec.model_dump(mode="json")
    dump.pop("task")
    blob = json.dumps(dump, sort_keys=True, separators=(",", ":"))
    assert spec.sha256() == hashlib.sha256(blob.encode()).hexdigest()


def test_other_engines_are_refused_at_plan_time(task_parquet, tmp_path):
    from dpbeam.job import plan_job

    spec = parse_spec(task_spec(task_parquet, str(tmp_path / "o")))
    for engine in ("beam", "spark"):
        with pytest.raises(SpecError, match="local engine"):
            plan_job(spec, engine=engine)


# ----------------------------------------------------------------------------------------------------------------------
# Accounting


def test_zcdp_part_is_rho_alpha_in_rdp():
    """The measurements enter the RDP composition as rho * alpha at every order, which is what rho-zCDP states."""
    rho = 0.0123
    for alpha, eps in rdp_curve(rho, 0.01, 1.0, 0):
        assert eps == pytest.approx(rho * alpha, rel=1e-12)


def test_composed_accountant_meets_the_budget_and_no_more():
    eps, delta = 1.0, 1e-9
    acc = ComposedAccountant(eps, delta, {"a": 0.5, "b": 0.5}, dpsgd_share=0.3, sample_rate=0.01, steps=500, clip=1.0)
    # the zCDP stages get 70% of the rho the whole budget would give
    assert acc.rho == pytest.approx(0.7 * rho_for(eps, delta), rel=1e-12)
    assert acc.allotted("a") == pytest.approx(0.35 * rho_for(eps, delta), rel=1e-12)
    # the whole composition is within the budget, and the noise multiplier is (nearly) the smallest that is:
    # 1% less noise overspends (bisection stops within 0.1%)
    assert acc.epsilon_at(delta) <= eps
    assert composed_epsilon(acc.rho, 0.01, acc.noise_multiplier * 0.99, 500, delta) > eps
    rec = acc.record()
    assert rec["epsilon"] == eps and rec["delta"] == delta
    assert rec["composition"]["epsilon_composed"] <= eps
    assert rec["dpsgd"]["noise_multiplier"] == acc.noise_multiplier
    assert rec["dpsgd"]["sensitivity_l2"] == 1.0
    # each part alone costs less than the whole
    split = rec["composition"]["split"]
    assert split["measurements"]["epsilon_alone"] < eps and split["dpsgd"]["epsilon_alone"] < eps
    # the profile at the budget's delta is the composition's epsilon
    at = {p["delta"]: p["epsilon"] for p in rec["privacy_profile"]}
    assert at[1e-9] == pytest.approx(acc.epsilon_at(1e-9))


def test_thresholds_delta_is_set_aside():
    """With delta reserved for thresholding, the composition converts at delta - delta_reserved."""
    acc = ComposedAccountant(1.0, 1e-6, {"a": 1.0}, 0.3, 0.02, 200, 1.0, delta_reserved=5e-7)
    assert acc.epsilon_at(1e-6) <= 1.0
    assert composed_epsilon(acc.rho, 0.02, acc.noise_multiplier, 200, 1e-6 - 5e-7) == pytest.approx(acc.epsilon_at(1e-6))


def test_no_room_for_dpsgd_is_a_budget_error():
    rho = rho_for(1.0, 1e-9)  # the measurements alone would take the whole budget
    with pytest.raises(BudgetError, match="task.budget_share"):
        noise_multiplier_for(rho * 1.01, 0.01, 100, 1.0, 1e-9)


def test_dpsgd_only_accounting_matches_dp_accounting_directly():
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    acc = rdp.RdpAccountant()
    acc.compose(dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(0.01, dp_event.GaussianDpEvent(2.0)), 300))
    # our orders are a superset of dp_accounting's defaults: the same answer or a tighter one, never looser
    ours = composed_epsilon(0.0, 0.01, 2.0, 300, 1e-6)
    assert ours <= acc.get_epsilon(1e-6)
    assert ours >= acc.get_epsilon(1e-6) * 0.98
    # zCDP only: dp_accounting's RDP conversion is a little looser than OpenDP's exact zCDP conversion
    assert epsilon_for(0.05, 1e-6) <= composed_epsilon(0.05, 0.01, 1.0, 0, 1e-6) <= 1.05 * epsilon_for(0.05, 1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Per-unit examples and clipping


def _bounded_rows(source: str, unit: str | None, k: int, tmp_path):
    from dpbeam.bounding import BoundingKey
    from dpbeam.job import plan_job
    from transforms import local

    privacy = {"unit": {"column": unit}, "max_rows_per_unit": k} if unit else {}
    spec = parse_spec(task_spec(source, str(tmp_path / "o"), **privacy))
    plan = plan_job(spec, check_outputs=False)
    rows = local.run_aggregation(plan.source, BoundedRows(plan.domain), unit, k, BoundingKey(b"k" * 32))
    return plan, rows


def test_one_example_per_unit(tmp_path):
    table = task_table(n=2000, units=600)  # ~3.3 rows a unit: some units above k, many below (padded)
    path = tmp_path / "users.parquet"
    pq.write_table(table, path)
    k = 4
    plan, rows = _bounded_rows(str(path), "user_id", k, tmp_path)
    codes, unit, slot = group_by_unit(rows, k)
    units = table.column("user_id").to_numpy()
    per_unit = np.bincount(np.unique(units, return_inverse=True)[1])
    # one example per unit, and each unit keeps min(its rows, k) rows
    assert unit.max() + 1 == len(per_unit)
    assert sorted(np.bincount(unit)) == sorted(np.minimum(per_unit, k))
    assert slot.max() == k - 1
    layout = FeatureLayout("y", ("a", "b", "r"), (6, 10, 10))
    ex = unit_examples(codes, unit, slot, k, layout, plan.domain.names, codes[:, 2])
    assert ex.inputs.shape == (len(per_unit), k, 4) and ex.mask.sum() == len(codes)
    # units with fewer than k rows are padded: padding rows carry mask 0 (no loss, no gradient)
    pad = ex.mask == 0
    assert pad.sum() == len(per_unit) * k - len(codes) > 0
    assert np.all(ex.inputs[pad][:, :-1] == 0) and np.all(ex.inputs[..., -1] == layout.bias_index)


def test_row_level_rows_are_units(task_parquet, tmp_path):
    plan, rows = _bounded_rows(task_parquet, None, 1, tmp_path)
    codes, unit, slot = group_by_unit(rows, 1)
    assert len(np.unique(unit)) == len(codes) == 3000 and np.all(slot == 0)


def _per_unit_gradients(k: int, units: int, seed: int = 0):
    """Per-example gradients from Opacus for units of k rows each (all rows real), flattened, one row per unit."""
    rng = np.random.default_rng(seed)
    layout = FeatureLayout("y", ("f",), (8,))
    codes = np.stack([rng.integers(0, 8, units * k), rng.integers(0, 2, units * k)], axis=1)
    unit = np.repeat(np.arange(units), k)
    slot = np.tile(np.arange(k), units)
    ex = unit_examples(codes, unit, slot, k, layout, ["f", "y"], codes[:, 1])
    net = build_net(layout.n_inputs, 0, 2)
    init_net(net, 0)
    with torch.no_grad():
        net.embed.weight.normal_(0, 3.0, generator=torch.Generator().manual_seed(1))  # large gradients: clipping binds
    model, _ = private_model(net, DPSGDParams(0.1, 1, 1.0, 1.0), torch.Generator().manual_seed(0))
    loss = unit_losses(model, torch.as_tensor(ex.inputs), torch.as_tensor(ex.targets),
                       torch.as_tensor(ex.mask)).sum()
    loss.backward()
    grads = torch.cat([p.grad_sample.reshape(units, -1) for p in model.parameters()], dim=1)
    return grads, ex, net


def test_clipping_bounds_a_whole_unit():
    """Opacus sees one example per unit (not per row), and its gradient is the sum of the unit's rows' gradients: so
    clipping to C bounds the unit's whole contribution (sensitivity C, no factor k)."""
    k, units = 5, 12
    grads, ex, net = _per_unit_gradients(k, units)
    assert grads.shape[0] == units
    # the per-unit gradient equals the gradient of that unit's summed loss, computed on its own
    for u in (0, 7):
        net.zero_grad()
        loss = unit_losses(net, torch.as_tensor(ex.inputs[u : u + 1]),
                           torch.as_tensor(ex.targets[u : u + 1]), torch.as_tensor(ex.mask[u : u + 1])).sum()
        loss.backward()
        own = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        torch.testing.assert_close(grads[u], own, rtol=1e-5, atol=1e-5)
    # and those gradients exceed C = 1 (k rows add up), which is what clipping per unit must bound
    assert float(grads.norm(dim=1).max()) > 2.0


def test_removing_a_unit_moves_the_clipped_sum_by_at_most_c():
    k, units, clip = 5, 12, 1.0
    grads, _, _ = _per_unit_gradients(k, units, seed=3)
    factors = torch.clamp(clip / (grads.norm(dim=1) + 1e-6), max=1.0)  # Opacus's flat clipping
    clipped = grads * factors[:, None]
    total = clipped.sum(dim=0)
    for u in range(units):
        assert float((total - (total - clipped[u])).norm()) <= clip + 1e-5


def test_dpsgd_step_adds_noise_of_multiplier_times_clip():
    """The noisy gradient of an all-padding batch (zero gradient) is pure noise with stddev z C per coordinate.

    1,000 x 4 = 4,000 coordinates: the sample stddev has relative standard error 1 / sqrt(2 * 4000) = 1.1%, so 5% is
    over 4 standard errors; a missing noise (0) or a noise scaled by k or by 1/batch would fail."""
    z, clip = 2.5, 0.7
    net = build_net(1000, 0, 4)
    init_net(net, 0)
    model, opt = private_model(net, DPSGDParams(0.1, 1, clip, z), torch.Generator().manual_seed(5))
    x = torch.full((1, 3, 2), 999, dtype=torch.int64)
    y = torch.zeros((1, 3))
    m = torch.zeros((1, 3))
    unit_losses(model, x, y, m).sum().backward()
    assert opt.pre_step()  # clip, sum, add noise; sets .grad
    g = net.embed.weight.grad
    assert float(g.std()) == pytest.approx(z * clip, rel=0.05)
    assert abs(float(g.mean())) < 5 * z * clip / math.sqrt(g.numel())


def test_regression_head_parameters_are_all_clipped_and_noised():
    """The binned regression head's parameters (the per-bin prior and the basis weights) are all under Opacus's
    per-unit clipping and noise: one large example's clipped gradient has L2 norm <= C over every parameter together,
    and an all-padding batch gets noise of stddev z C on the prior too. 2,000 x 2 + 4,000 = 8,000 coordinates: the
    sample stddev's relative standard error is 1 / sqrt(2 * 8000) = 0.8%; 5% is over 6 of them."""
    from dpbeam.domain import BinnedDomain
    from dpbeam.task.model import regression_basis

    col = BinnedDomain("t", "int64", False, edges=tuple(range(0, 4001)), binned_kind="integer")
    basis = regression_basis(col, None, 4000)
    assert basis.shape == (2, 4000) and basis[0, 0] == -1.0 and basis[0, -1] == 1.0
    z, clip = 2.5, 0.7
    net = build_net(2000, 0, 4000, basis)
    init_net(net, 0)
    model, opt = private_model(net, DPSGDParams(0.1, 1, clip, 0.0), torch.Generator().manual_seed(5))
    x = torch.tensor([[[3, 1999]]])
    unit_losses(model, x, torch.tensor([[3999.0]]), torch.ones((1, 1))).sum().backward()
    unclipped = torch.cat([p.grad_sample.reshape(1, -1) for p in model.parameters()], dim=1).norm()
    assert float(unclipped) > 1.5 * clip  # the clip binds
    assert opt.pre_step()
    flat = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    assert float(net.prior.weight.grad.abs().max()) > 0 and float(flat.norm()) <= clip * (1 + 1e-5)
    net2 = build_net(2000, 0, 4000, basis)
    init_net(net2, 0)
    model, opt = private_model(net2, DPSGDParams(0.1, 1, clip, z), torch.Generator().manual_seed(6))
    unit_losses(model, x, torch.zeros((1, 1)), torch.zeros((1, 1))).sum().backward()
    assert opt.pre_step()
    noise = torch.cat([net2.embed.weight.grad.reshape(-1), net2.prior.weight.grad.reshape(-1)])
    assert float(noise.std()) == pytest.approx(z * clip, rel=0.05)


def test_training_learns_the_task(task_parquet, tmp_path):
    """DP-SGD on 3,000 rows at noise multiplier 1 (q = 0.05: ~150 units a step, noise stddev 1 per coordinate against
    a summed gradient of ~150 clipped terms) learns y = [b >= 5] (90% accurate by construction, majority 50%). Fixed
    noise seed; 0.8 leaves 10 points for the noise's bias of the weights at this signal-to-noise ratio."""
    plan, rows = _bounded_rows(task_parquet, None, 1, tmp_path)
    codes, unit, slot = group_by_unit(rows, 1)
    names = plan.domain.names
    sizes = dict(zip(names, plan.domain.sizes))
    features = ("a", "b", "r")
    layout = FeatureLayout("y", features, tuple(sizes[f] for f in features))
    ex = unit_examples(codes, unit, slot, 1, layout, names, codes[:, names.index("y")])
    weights, device = train_dpsgd(ex, 2, layout.n_inputs, 0, DPSGDParams(0.05, 200, 1.0, 1.0),
                                  noise_seed=7)
    from dpbeam.task.model import TaskModel

    model = TaskModel("classification", layout, 0, 2, weights, {"classes": 2})
    feats = codes[:, [names.index(f) for f in features]]
    acc = np.mean(model.predict(feats).argmax(axis=1) == codes[:, names.index("y")])
    assert acc >= 0.8, acc


# ----------------------------------------------------------------------------------------------------------------------
# The whole job, the artifact, the guardrail


def dpdsyn_as_printed(real: pa.Table, target: str, seed: int = 0) -> pa.Table:
    """The planted flaw: DPDSyn's printed algorithm shuffles each real feature column and labels the rows with a
    model (here a stand-in labeller; the features are what matters). NOT DP: every feature value is real."""
    rng = np.random.default_rng(seed)
    cols = {}
    for name in real.column_names:
        if name == target:
            cols[name] = pa.array(rng.integers(0, 2, real.num_rows))
        else:
            cols[name] = real.column(name).take(pa.array(rng.permutation(real.num_rows)))
    return pa.table(cols)


def test_task_job_end_to_end_and_guardrail(task_parquet, tmp_path):
    from dpbeam.job import run_job
    from dpbeam.task.job import task_model_uri

    spec = parse_spec(task_spec(task_parquet, str(tmp_path / "out")))
    statement = run_job(spec)
    synth = pq.read_table(spec.output.uri)
    real = pq.read_table(task_parquet)
    # the release's figures are the budget's; its text states the composition with DP-SGD
    assert statement["epsilon"] == 4.0 and statement["delta"] == 1e-6
    assert "DP-SGD" in statement["statement"] and "Renyi-DP composition" in statement["statement"]
    assert statement["synthesizer"]["task"]["target"] == "y"
    assert statement["synthesizer"]["task"]["combine"] == "geometric"  # pgm: the pool with its exact conditional
    assert statement["synthesizer"]["task"]["mix"] == 0.75 and statement["synthesizer"]["task"]["calibrate"] is False
    with open(os.path.join(spec.output.resolved_measurements_uri, "privacy.json")) as f:
        privacy = json.load(f)
    assert privacy["composition"]["epsilon_composed"] <= 4.0
    assert privacy["dpsgd"]["steps"] == 200 and privacy["dpsgd"]["sample_rate"] == 0.05
    # the task model is written beside the measurements with its own statement
    model = read_task_model(task_model_uri(spec))
    assert model.statement["epsilon"] == 4.0
    assert model.statement["dpsgd"]["epsilon_alone"] < 4.0
    assert "DP-SGD" in model.statement["statement"]
    assert "train_seconds" not in json.dumps(model.statement)  # no timing of the trusted pass
    # labels follow the task: in the synthetic table y agrees with [b >= 5] far above chance (90% in the real
    # table; the DP model at eps 4 and the marginal model's b are both noisy, so 0.75 is the bar)
    b = synth.column("b").to_numpy()
    y = synth.column("y").to_numpy()
    assert np.mean(y == (b >= 5)) > 0.75
    # guardrail: no output column is a permutation or a copy of a real column ...
    assert copied_columns(real, synth) == []
    # ... while DPDSyn as printed fails the same check on every feature column
    assert sorted(copied_columns(real, dpdsyn_as_printed(real, "y"))) == ["a", "b", "r"]


def test_marginal_conditional_is_the_models_own_and_labels_follow_the_pool(task_parquet, tmp_path):
    """The marginal model's conditional (from the cliques that hold the target) equals the one read off its full
    joint (mbi-independent numpy inference over all columns); the geometric pool and the guided sampler's labels
    follow it."""
    from dpbeam.job import run_job
    from dpbeam.measurements import MeasurementsArtifact
    from dpbeam.synth.synthesize import fit_model
    from dpbeam.task.guide import TaskGuidedModel, marginal_conditional, pooled
    from dpbeam.task.job import task_model_uri

    spec = parse_spec(task_spec(task_parquet, str(tmp_path / "out")))
    run_job(spec)
    art = MeasurementsArtifact.read(spec.output.resolved_measurements_uri)
    base = fit_model(art, "pgm", iters=200)
    names = art.domain.names
    sizes = [art.model_sizes[n] for n in names]
    joint = base.clique_marginal(tuple(names))  # counts over every cell, axes in names' order
    j = names.index("y")
    want = np.moveaxis(joint / joint.sum(axis=j, keepdims=True), j, -1).reshape(-1, sizes[j])
    cells = np.stack([g.ravel() for g in np.indices([s if i != j else 1 for i, s in enumerate(sizes)])], axis=1)
    got = marginal_conditional(base, "y", cells)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    # the geometric pool: mix 0 is the task model, 1 the marginal model, 1/2 the normalized geometric mean
    a = np.array([[0.9, 0.1], [0.2, 0.8]])
    b = np.array([[0.5, 0.5], [0.6, 0.4]])
    np.testing.assert_allclose(pooled(a, b, 0.0), a)
    np.testing.assert_allclose(pooled(a, b, 1.0), b)
    g = np.sqrt(a * b)
    np.testing.assert_allclose(pooled(a, b, 0.5), g / g.sum(axis=1, keepdims=True))
    # the sampler draws each row's label from the pool of the two conditionals given that row's features. Rows
    # grouped by their pooled P(y = 1) into 10 groups of 4,000: each group's share of y = 1 minus its mean pooled
    # P(y = 1) has standard error <= 0.5 / sqrt(4000) = 0.0079 (the draws are the only noise: the pool is recomputed
    # from the returned rows' features). The sampling seed is fixed but the model is not (OpenDP's and DP-SGD's
    # noise), so the gaps are fresh draws each run: 5 standard errors (0.040) fail a correct sampler with
    # probability < 10 x 5.7e-7 ~ 6e-6 over the 10 groups (4, the old 0.032, ~3e-4 a run). Measured, 32 draws (8
    # jobs x 4 seeds): the largest gap 0.006-0.020, at most 2.8 of its group's own binomial sd. Labels drawn from
    # either conditional alone, or kept from the marginal model's draw, miss by more (> 0.064, checked below; 0.40
    # and 0.63 measured) in the groups where the two models disagree.
    task = read_task_model(task_model_uri(spec))
    # a task model that disagrees with the marginal model: the trained one with its two classes swapped, and
    # shifted by one logit towards y = 1 (as the clipping bias of DP-SGD can shift a model's base rate)
    assert task.hidden == 0 and task.weights["embed.weight"].shape[1] == 2
    weight = task.weights["embed.weight"][:, ::-1].copy()
    weight[task.layout.bias_index, 1] += 1.0
    task.weights = {"embed.weight": weight}
    guided = TaskGuidedModel(base, task, art, 0.5, "geometric", calibrate=False)
    rows = guided.sample(40_000, seed=3)
    feats = rows[:, [names.index(f) for f in task.layout.features]]
    p_task, p_marg = task.predict(feats), marginal_conditional(base, "y", rows)
    p1 = pooled(p_task, p_marg, 0.5)[:, 1]
    groups = np.array_split(np.argsort(p1, kind="stable"), 10)
    gaps = [abs(rows[g, j].mean() - p1[g].mean()) for g in groups]
    assert max(gaps) < 5 * 0.5 / math.sqrt(4000), gaps
    # the two conditionals disagree on these rows, so the check above tells the pool from either of them
    assert max(abs(p_task[g, 1].mean() - p1[g].mean()) for g in groups) > 0.064
    assert max(abs(p_marg[g, 1].mean() - p1[g].mean()) for g in groups) > 0.064
    # calibration: the labels' share of y = 1 becomes the marginal model's own P(y = 1). Standard errors: 40,000
    # labels, <= 0.0025; the offsets' target, estimated from CALIBRATION_ROWS = 65,536 model draws, <= 0.002; 5 of
    # the two combined (0.016; two-sided tail 5.7e-7; 4 of them, the old 0.013, ~6e-5). Measured, 32 draws: 0.0000-
    # 0.0037. Uncalibrated, this disagreeing pool misses it by far more (0.12-0.16 measured; > 0.05 asserted).
    p_y = base.clique_marginal(("y",))[1] / base.total
    calibrated = TaskGuidedModel(base, task, art, 0.5, "geometric", calibrate=True).sample(40_000, seed=4)
    assert abs(calibrated[:, j].mean() - p_y) < 5 * math.hypot(0.5 / math.sqrt(40_000), 0.5 / math.sqrt(65_536))
    assert abs(rows[:, j].mean() - p_y) > 0.05


def test_regression_target(task_parquet, tmp_path):
    from dpbeam.job import run_job

    task = {"target": "r", "kind": "regression", "sample_rate": 0.05, "epochs": 10, "hidden": 8}
    data = task_spec(task_parquet, str(tmp_path / "out"), task)
    data["synthesizer"] = {"method": "mst", "engine": "torch", "iters": 300}  # features from the other engine
    spec = parse_spec(data)
    statement = run_job(spec)
    assert statement["synthesizer"]["engine"] == "torch" and statement["synthesizer"]["task"]["kind"] == "regression"
    # torch has no closed-form conditional: the arithmetic rule ran and the statement says so; regression's defaults
    note = statement["synthesizer"]["task"]
    assert note["combine"] == "arithmetic" and "arithmetic rule ran" in note["labels"]
    assert note["mix"] == 0.75 and note["calibrate"] is True
    synth = pq.read_table(spec.output.uri)
    r = synth.column("r").to_numpy()
    b = synth.column("b").to_numpy()
    assert r.min() >= 0 and r.max() <= 99
    # r = 10 b + small noise in the real table: the synthetic r must still track b (correlation 0.99 in the real
    # table; 0.6 allows for the DP model's noise and the 10-wide bins)
    assert np.corrcoef(r, b)[0, 1] > 0.6
    assert copied_columns(pq.read_table(task_parquet), synth) == []


def test_task_model_location_must_be_free(task_parquet, tmp_path):
    from dpbeam.errors import OutputExistsError
    from dpbeam.job import plan_job
    from dpbeam.task.job import task_model_uri

    spec = parse_spec(task_spec(task_parquet, str(tmp_path / "out")))
    os.makedirs(task_model_uri(spec))
    with open(os.path.join(task_model_uri(spec), "x"), "w") as f:
        f.write("x")
    with pytest.raises(OutputExistsError, match="task model"):
        plan_job(spec)


def test_unit_level_task_job(tmp_path, monkeypatch):
    """A user-level job: DP-SGD examples are units (k = 3 rows each at most); the model's statement says so. The
    examples the job hands to DP-SGD are captured: one per user, each holding min(the user's rows, k) rows, so one
    clipped gradient covers one user's whole contribution (a job that trained on rows, or on units cut at other
    than k, fails here)."""
    from dpbeam.job import run_job
    from dpbeam.task import job as task_job
    from dpbeam.task.job import task_model_uri

    seen = []
    real_train = task_job.train_dpsgd

    def capture(examples, *args, **kwargs):
        seen.append(examples)
        return real_train(examples, *args, **kwargs)

    monkeypatch.setattr(task_job, "train_dpsgd", capture)
    table = task_table(n=3000, units=800)
    path = tmp_path / "users.parquet"
    pq.write_table(table, path)
    k = 3
    spec = parse_spec(task_spec(str(path), str(tmp_path / "out"), unit={"column": "user_id"}, max_rows_per_unit=k))
    statement = run_job(spec)
    assert statement["max_rows_per_unit"] == k and statement["epsilon"] == 4.0
    (ex,) = seen
    per_user = np.bincount(np.unique(table.column("user_id").to_numpy(), return_inverse=True)[1])
    assert ex.inputs.shape[:2] == (len(per_user), k)
    assert sorted(ex.mask.sum(axis=1).astype(int)) == sorted(np.minimum(per_user, k))
    assert per_user.max() > k  # some users are cut to k: bounding is exercised
    # the rows of one example are one user's: a user with fewer than k rows is exactly one example (as multisets of
    # the rows' model inputs), so rows were neither split across examples nor pooled from several users
    from collections import Counter

    from dpbeam.encode import encode_batch
    from dpbeam.measurements import MeasurementsArtifact
    from dpbeam.task.data import to_model_codes

    art = MeasurementsArtifact.read(spec.output.resolved_measurements_uri)
    names = art.domain.names
    codes = to_model_codes(encode_batch(table.select(names), art.domain), names, art.compression)
    layout = read_task_model(task_model_uri(spec)).layout
    idx = layout.indices(codes[:, [names.index(f) for f in layout.features]])
    users = np.unique(table.column("user_id").to_numpy(), return_inverse=True)[1]
    small = {u for u in range(len(per_user)) if per_user[u] < k}
    want = Counter(tuple(sorted(map(tuple, idx[users == u]))) for u in small)
    real = ex.mask.sum(axis=1).astype(int)
    got = Counter(tuple(sorted(map(tuple, ex.inputs[e][ex.mask[e] == 1]))) for e in range(len(real)) if real[e] < k)
    assert len(want) > 100 and got == want
    model = read_task_model(task_model_uri(spec))
    text = model.statement["statement"]
    assert "one privacy unit (column user_id)" in text and f"at most {k} bounded row(s) as one example" in text
    synth = pq.read_table(spec.output.uri)
    assert "user_id" not in synth.column_names
    assert copied_columns(table, synth) == []


# ----------------------------------------------------------------------------------------------------------------------
# The target's pairs (task.pairs_share)


def test_pairs_share_splits_the_task_budget(task_parquet, tmp_path):
    """budget_share is the task's part of the budget: DP-SGD gets budget_share (1 - pairs_share), the target's pairs
    the rho of budget_share pairs_share, and MST keeps the same rho as without pairs. The composition still meets
    the one budget."""
    from dpbeam.job import plan_job
    from dpbeam.task.pairs import STAGE

    task = {"target": "y", "kind": "classification", "sample_rate": 0.05, "epochs": 10, "budget_share": 0.2,
            "pairs_share": 0.75}
    acc = plan_job(parse_spec(task_spec(task_parquet, str(tmp_path / "o"), task)), check_outputs=False).accountant
    plain = plan_job(parse_spec(task_spec(task_parquet, str(tmp_path / "o"), {**task, "pairs_share": 0.0,
                                                                              "budget_share": 0.2})),
                     check_outputs=False).accountant
    assert acc.dpsgd_share == pytest.approx(0.05)
    assert acc.allotted(STAGE) == pytest.approx(0.15 * acc.rho_budget, rel=1e-12)
    assert acc.rho == pytest.approx(0.95 * acc.rho_budget, rel=1e-12)
    # the MST stages get what they would get with budget_share 0.05 and no pairs: 0.8 of the budget's rho
    assert math.fsum(f for s, f in acc.plan.items() if s != STAGE) * acc.rho == pytest.approx(0.8 * acc.rho_budget)
    assert sum(acc.plan.values()) == pytest.approx(1.0)
    assert STAGE not in plain.plan and plain.dpsgd_share == pytest.approx(0.2)
    assert acc.epsilon_at(acc.delta) <= 4.0 + 1e-9


def test_pairs_share_is_refused_with_aim(tmp_path):
    data = task_spec("x.parquet", str(tmp_path / "o"), {"target": "y", "kind": "classification", "pairs_share": 0.5})
    data["synthesizer"] = {"method": "aim"}
    with pytest.raises(SpecError, match="task.pairs_share"):
        parse_spec(data)
    data["task"]["pairs_share"] = 0.0
    parse_spec(data)


def _pairs_job(tmp_path, method: str, k: int | None):
    from dpbeam.job import run_job
    from dpbeam.measurements import MeasurementsArtifact

    table = task_table(n=3000, units=800 if k else None)
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    task = {"target": "y", "kind": "classification", "sample_rate": 0.05, "epochs": 10, "budget_share": 0.3,
            "pairs_share": 0.5}
    privacy = {"unit": {"column": "user_id"}, "max_rows_per_unit": k} if k else {}
    data = task_spec(str(path), str(tmp_path / "out"), task, **privacy)
    data["synthesizer"] = {"method": method, "iters": 200}
    spec = parse_spec(data)
    run_job(spec)
    return table, spec, MeasurementsArtifact.read(spec.output.resolved_measurements_uri)


@pytest.mark.parametrize("method", ["mst", "mst-refined"])
def test_target_pairs_are_charged_at_their_sensitivity(tmp_path, method):
    """User-level (k = 3): every (column, target) pair is measured once more, at sigma = k / sqrt(2 rho_stage /
    (d - 1)) with L2 sensitivity k (all k rows of a unit can sit in one cell), charged to the pairs' stage, which
    spends exactly its rho (0.15 of the budget's here) and no more; the whole job still meets the budget. A charge
    at sensitivity 1, or a sigma from the row-level formula, fails here."""
    from dpbeam.privacy.noise import gaussian_sigma
    from dpbeam.task.pairs import STAGE

    k = 3
    _, _, art = _pairs_job(tmp_path, method, k)
    privacy = art.privacy
    charges = [c for c in privacy["charges"] if c["stage"] == STAGE]
    d = len(art.domain.names)
    assert len(charges) == d - 1
    stage = privacy["stages"][STAGE]
    assert stage["rho_charged"] <= stage["rho_allotted"]
    assert stage["rho_charged"] == pytest.approx(stage["rho_allotted"], rel=1e-9)
    assert stage["rho_allotted"] == pytest.approx(0.15 * privacy["composition"]["rho_budget"], rel=1e-9)
    sigma = gaussian_sigma(stage["rho_allotted"] / (d - 1), k)
    for c in charges:
        assert c["sensitivity_l2"] == k and c["sigma"] == pytest.approx(sigma, rel=1e-12)
        assert c["rho"] == pytest.approx(k**2 / (2 * sigma**2), rel=1e-9)
    assert privacy["composition"]["epsilon_composed"] <= 4.0
    assert privacy["dpsgd"]["budget_share"] == pytest.approx(0.15)
    pairs = art.measurements[-(d - 1):]
    assert sorted(tuple(sorted(m.clique)) for m in pairs) == sorted(
        tuple(sorted((n, "y"))) for n in art.domain.names if n != "y")


def test_target_pairs_noise_has_the_stated_scale(tmp_path):
    """Row-level: the pairs' residuals against the exact cubes of the table have standard deviation sigma (the
    sample s.d. of m residuals within 6 standard errors, sigma (1 +- 6 / sqrt(2 m)); the noise is OpenDP's, drawn
    fresh). Pairs measured without noise, or at another scale than the one charged, fail here."""
    from dpbeam.encode import encode_batch
    from dpbeam.task.data import to_model_codes

    table, _, art = _pairs_job(tmp_path, "mst", None)
    names = art.domain.names
    d = len(names)
    codes = to_model_codes(encode_batch(table.select(names), art.domain), names, art.compression)
    res = []
    for m in art.measurements[-(d - 1):]:
        assert m.groups is None and m.weights is None
        i, j = (names.index(c) for c in m.clique)
        sizes = m.values.shape
        exact = np.bincount(codes[:, i] * sizes[1] + codes[:, j], minlength=sizes[0] * sizes[1]).reshape(sizes)
        res.append((m.values - exact).ravel() / m.stddev)
    res = np.concatenate(res)
    assert len(res) >= 40
    sd = float(np.sqrt(np.mean(res**2)))
    assert abs(sd - 1) < 6 / math.sqrt(2 * len(res))
    assert abs(float(res.mean())) < 6 / math.sqrt(len(res))


def test_target_pairs_keep_the_model_within_max_model_cells():
    """The pairs make the target every column's neighbour; one that would grow the junction tree past max_cells is
    not measured. Tree a - b - r (sizes 5, 10, 10) and target y (2): (a, y) keeps a tree, (b, y) closes the clique
    (a, b, y) of 100 cells, (y, r) then needs (b, r, y) of 200."""
    from dpbeam.task.pairs import pairs_that_fit

    sizes = {"a": 5, "b": 10, "y": 2, "r": 10}
    measured = [("a",), ("b",), ("y",), ("r",), ("a", "b"), ("b", "r")]
    pairs = [("a", "y"), ("b", "y"), ("y", "r")]
    assert pairs_that_fit(pairs, sizes, measured, 100) == [("a", "y"), ("b", "y")]
    assert pairs_that_fit(pairs, sizes, measured, 200) == pairs
    assert pairs_that_fit(pairs, sizes, measured, 9) == []


def test_target_pairs_that_do_not_fit_spend_the_stage_on_the_target(tmp_path):
    """max_model_cells below every pair: the pairs' stage measures the target's 1-way marginal once with its whole
    rho (sensitivity k), so the stage still spends exactly its rho and the model keeps its size."""
    from dpbeam.job import run_job
    from dpbeam.measurements import MeasurementsArtifact
    from dpbeam.privacy.noise import gaussian_sigma
    from dpbeam.task.pairs import STAGE

    path = tmp_path / "t.parquet"
    pq.write_table(task_table(n=3000), path)
    task = {"target": "y", "kind": "classification", "sample_rate": 0.05, "epochs": 10, "budget_share": 0.3,
            "pairs_share": 0.5}
    data = task_spec(str(path), str(tmp_path / "out"), task)
    data["synthesizer"] = {"method": "mst", "iters": 200, "max_model_cells": 1}
    spec = parse_spec(data)
    run_job(spec)
    privacy = MeasurementsArtifact.read(spec.output.resolved_measurements_uri).privacy
    (charge,) = [c for c in privacy["charges"] if c["stage"] == STAGE]
    stage = privacy["stages"][STAGE]
    assert charge["clique"] == ["y"] and charge["sensitivity_l2"] == 1
    assert charge["sigma"] == pytest.approx(gaussian_sigma(stage["rho_allotted"], 1), rel=1e-12)
    assert stage["rho_charged"] == pytest.approx(stage["rho_allotted"], rel=1e-9)


def test_low_signal_replan_keeps_the_pairs_stage(monkeypatch):
    """When refinement does not pay, MST's and the refinement's free rho is replanned to MST's low-signal split;
    the target's pairs keep the rho they were planned (they are not silently folded into MST)."""
    from dpbeam.privacy import refine
    from dpbeam.privacy.accountant import ZCDPAccountant
    from dpbeam.privacy.mst import mst_plan
    from dpbeam.privacy.noise import gaussian_rho
    from dpbeam.task.pairs import STAGE, with_pairs_stage

    from dpbeam.domain import BinnedDomain, TableDomain
    from dpbeam.marginals import count_cliques
    from dpbeam.privacy.mst import required_cliques

    # the exact row count (the rule's own noise is not under test: see test_mst's low-signal test)
    monkeypatch.setattr(refine, "add_discrete_gaussian", lambda c, s, k: (np.asarray(c), gaussian_rho(s, k)))
    sizes = [4, 3, 5, 2, 6]
    dom = TableDomain(tuple(BinnedDomain(f"c{i}", "int64", False, edges=tuple(range(s + 1)))
                            for i, s in enumerate(sizes)))
    rng = np.random.default_rng(0)
    codes = np.stack([rng.integers(0, s, 5000) for s in sizes], 1).astype(np.uint8)
    cubes = count_cliques(codes, dom, required_cliques(dom.names))
    acc = ZCDPAccountant(0.01, 1e-9, with_pairs_stage(mst_plan(len(sizes), refine=True), 0.2))
    pairs_rho = acc.allotted(STAGE)
    assert refine.decide_refinement(cubes, dom, 1, acc) is False
    assert "refine" not in acc.plan
    assert acc.allotted(STAGE) == pytest.approx(pairs_rho, rel=1e-12)
    assert sum(acc.plan.values()) == pytest.approx(1.0)
