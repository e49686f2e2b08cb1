"""Task-guided synthesis: a DP-SGD model of the downstream task draws the target column of the synthetic table.

The sound version of DPDSyn (Jia et al. 2026). As printed, DPDSyn shuffles the real feature columns and labels them
with a DP model: the released feature values are real data, so that release is not DP. Here the features come from
the DP marginal model (either synthesis engine) and only the label is drawn: from the DP model's predictive
distribution pooled with the marginal model's own conditional (``task.mix``, ``task.combine``), optionally calibrated
to the marginal model's 1-way marginal of the target (``task.calibrate``). Regression predicts a distribution over the
target's public bins, so the target's shape is kept.

- :mod:`dpbeam.task.data` (trusted side): the bounded rows as training examples, one per privacy unit.
- :mod:`dpbeam.task.train` (trusted side): DP-SGD with Opacus (Poisson sampling of units, per-unit clipping).
- :mod:`dpbeam.task.model`: the network and its readable file form (a DP artifact with its own statement).
- :mod:`dpbeam.task.guide` (post-processing): labels for synthetic features.
- :mod:`dpbeam.task.guardrail`: the check that no output column is a copy or permutation of a real column.
- :mod:`dpbeam.task.job`: the hooks :mod:`dpbeam.job` and :mod:`dpbeam.synth.synthesize` call.

Accounting: :class:`dpbeam.privacy.accountant.ComposedAccountant` composes the zCDP measurements with DP-SGD in Renyi
DP against the one (epsilon, delta) budget.
"""
