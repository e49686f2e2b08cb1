"""The hooks :mod:`dpbeam.job` and :mod:`dpbeam.synth.synthesize` call for a spec with a ``task`` section.

- :func:`plan_task` (plan time, no budget spent): refuses what cannot run, and makes the job's accountant, which
  composes the zCDP measurements with DP-SGD and fixes every DP-SGD parameter.
- :func:`train_task` (trusted side, after the measurements): reads the bounded rows, trains with DP-SGD, returns the
  task model with its own statement; :func:`write_task_model` writes it beside the measurements.
- :func:`guide` (post-processing): wraps the fitted marginal model so its samples get their target from the task
  model.
"""

from __future__ import annotations

from typing import Any

from dpbeam.errors import SpecError
from dpbeam.measurements import MeasurementsArtifact
from dpbeam.privacy.accountant import ComposedAccountant
from dpbeam.spec import JobSpec
from dpbeam.task.data import BoundedRows, FeatureLayout, group_by_unit, to_model_codes, unit_examples
from dpbeam.task.guide import TaskGuidedModel
from dpbeam.task.model import TaskModel, regression_basis, write_task_model
from dpbeam.task.pairs import with_pairs_stage
from dpbeam.task.train import DPSGDParams, train_dpsgd

TASK_ENGINES = ("local",)


def task_model_uri(spec: JobSpec) -> str:
    """Where the task model is written: beside the measurements artifact."""
    return spec.output.resolved_measurements_uri.rstrip("/") + ".task-model"


def plan_task(spec: JobSpec, engine: str, budget: dict[str, float], delta_reserved: float,
              check_outputs: bool = True) -> ComposedAccountant:
    """Plan-time checks and the composed accountant: DP-SGD gets ``task.dpsgd_share`` of the budget; with
    ``task.pairs_share`` the zCDP plan gets a :data:`dpbeam.task.pairs.STAGE` stage worth ``task.pairs_budget`` of the
    budget's rho (the other measurement stages scaled down to make room). DP-SGD needs the bounded rows in the
    training process, which only the local engine supplies: any other engine is refused here, before any budget is
    spent."""
    if engine not in TASK_ENGINES:
        raise SpecError(
            f"task-guided synthesis trains on the bounded rows in this process, which the {engine} engine does not "
            "supply: run the job with the local engine (--engine local), or remove the task section"
        )
    if check_outputs:
        from dpbeam import lake

        lake.check_output_free(task_model_uri(spec), spec.output.overwrite, "the task model's location")
    t = spec.task
    if t.pairs_share > 0:  # the target's pairs: t.pairs_budget of the whole rho, out of the measurements' 1 - dpsgd
        budget = with_pairs_stage(budget, t.pairs_budget / (1.0 - t.dpsgd_share))
    return ComposedAccountant(spec.privacy.epsilon, spec.privacy.delta, budget, dpsgd_share=t.dpsgd_share,
                              sample_rate=t.sample_rate, steps=t.steps, clip=t.clip, delta_reserved=delta_reserved)


def train_task(plan: Any, artifact: MeasurementsArtifact, engine: str, key: Any, reporter: Any,
               **options: Any) -> TaskModel:
    """Train the task model on the bounded rows (trusted side) and return it with its statement.

    The rows are bounded again to the artifact's k (a fresh pass; any keyed choice of <= k rows per unit keeps every
    sensitivity) and encoded in the artifact's domain; features and target are mapped to the model domain by the
    artifact's compression (a DP output). DP-SGD is :func:`dpbeam.task.train.train_dpsgd` with the parameters the
    plan's :class:`ComposedAccountant` fixed."""
    from dpbeam.job import run_aggregation
    from dpbeam.promise import task_model_text

    spec: JobSpec = plan.spec
    t = spec.task
    acc: ComposedAccountant = plan.accountant
    domain = artifact.domain
    k = int(artifact.privacy["max_rows_per_unit"])
    rows = run_aggregation(plan, BoundedRows(domain), engine, key, reporter, k=k, what="reading the training rows",
                           **options)
    codes, unit, slot = group_by_unit(rows, k)
    del rows
    names = domain.names
    model_codes = to_model_codes(codes, names, artifact.compression)
    sizes = artifact.model_sizes
    features = tuple(n for n in names if n != t.target)
    layout = FeatureLayout(t.target, features, tuple(sizes[n] for n in features))
    j = names.index(t.target)
    # both kinds: a softmax over the target's model-domain codes (for regression, its public bins; a null is a code)
    outputs = sizes[t.target]
    encoding: dict[str, Any] = {"classes": outputs}
    basis = None
    if t.kind == "regression":  # the bins' order and positions shape the logits (dpbeam.task.model.build_net)
        basis = regression_basis(domain[t.target], artifact.compression.get(t.target), outputs)
        encoding["basis"] = basis.tolist()
    examples = unit_examples(model_codes, unit, slot, k, layout, names, model_codes[:, j])
    del codes, model_codes, unit, slot
    params = DPSGDParams(acc.sample_rate, acc.steps, acc.clip, acc.noise_multiplier, t.learning_rate)
    with reporter.stage(f"training the task model with DP-SGD ({params.steps} steps)", total=params.steps) as adv:
        weights, device = train_dpsgd(examples, outputs, layout.n_inputs, t.hidden, params, seed=spec.seed,
                                      progress=adv, basis=basis)
    del examples
    if "dpsgd" not in artifact.privacy:  # noise switched off by the test hook: no claim, and nothing can be written
        return TaskModel(t.kind, layout, t.hidden, outputs, weights, encoding,
                         {"not_private": "noise was switched off by a test hook; this model makes no privacy claim"},
                         mix=t.label_mix, combine=t.combine, calibrate=t.label_calibrate)
    # no training time here: it depends on how many units are sampled (timing is not protected, so none is written)
    statement = {
        "statement": task_model_text(artifact.privacy),
        "privacy_unit": artifact.privacy["privacy_unit"],
        "epsilon": artifact.privacy["epsilon"],
        "delta": artifact.privacy["delta"],
        "dpsgd": artifact.privacy["dpsgd"],
        "composition": artifact.privacy["composition"],
        "target": t.target,
        "kind": t.kind,
        "model": {"hidden": t.hidden, "inputs": "one-hot model-domain codes of " + ", ".join(features),
                  "device": device},
        "spec_sha256": spec.sha256(),
    }
    return TaskModel(t.kind, layout, t.hidden, outputs, weights, encoding, statement, mix=t.label_mix,
                     combine=t.combine, calibrate=t.label_calibrate)


def write_model(spec: JobSpec, model: TaskModel) -> str:
    """Write the model beside the measurements; returns its URI."""
    uri = task_model_uri(spec)
    write_task_model(model, uri, overwrite=spec.output.overwrite)
    return uri


def guide(model: Any, task: TaskModel, artifact: MeasurementsArtifact, mix: float,
          combine: str | None = None) -> tuple[TaskGuidedModel, dict]:
    """The fitted marginal model wrapped so its samples' target comes from ``task`` pooled with the marginal model's
    own conditional (``combine``, default the model's ``task.combine``); and the statement's note."""
    guided = TaskGuidedModel(model, task, artifact, mix, combine or task.combine, task.calibrate)
    rule = guided.rule
    if rule == "geometric":
        how = (f"drawn from the geometric pool of two DP conditionals given the synthetic features: the task model's "
               f"predictive distribution to the power {1 - mix:g} times the marginal model's conditional to the power "
               f"{mix:g}, normalized")
    else:
        how = (f"drawn from the DP task model's predictive distribution given the synthetic features, except a share "
               f"{mix:g} of rows that keep the marginal model's draw")
        if guided.combine == "geometric":
            how += f" (the {model.engine} engine gives no closed-form conditional, so the arithmetic rule ran)"
    if task.calibrate:
        how += ("; one offset per target code shifts the labels' log-probabilities so that their distribution over "
                "the marginal model's rows is the marginal model's own 1-way marginal of the target")
    info = {"target": task.layout.target, "kind": task.kind, "mix": mix, "combine": rule,
            "calibrate": task.calibrate, "labels": how}
    return guided, info
