"""The promise dpbeam makes, in one place. The README and the release statement quote this module; nothing restates
it.

:data:`PROMISE` is the general text (the README carries it verbatim); :func:`statement_text` is the promise of one
release, filled in from its privacy record: the budget's (epsilon, delta, rho), the privacy unit, k, whether the
guarantee is approximate zCDP (values discovered by thresholding) and which columns hold real values.
"""

from __future__ import annotations

from typing import Any, Sequence

PROMISE = (
    "A dpbeam release (the synthetic table and the measurements artifact it was made from) satisfies "
    "(ε, δ)-differential privacy for adding or removing one privacy unit together with all of its rows. The privacy "
    "unit is a column you name (user id, account id, device id) or the row; each unit contributes at most k rows, "
    "chosen by a keyed hash, and every noise scale follows from k. The ε and δ are those of the budget you set: the "
    "whole run is ρ-zCDP for the budget's ρ whatever the data (approximate zCDP when categorical values are "
    "discovered, whose thresholding spends part of δ), and every release states ε over a grid of δ from the same ρ. "
    "Synthetic rows are generated from noisy measurements; no real row is copied. Values come from the spec's public "
    "domains, except categorical values discovered from the data: those are real values, each released only because "
    "a noisy count of the units holding it passed a threshold (DP partition selection, covered by the guarantee), so "
    "a value held by few units is unlikely to appear. Assumed: the operator and the engine's workers are trusted; the "
    "spec (domains, bounds, budget) is chosen without looking at the data; the source's schema (Parquet and catalog "
    "metadata) and its file listing are public. Not protected: the run's timing."
)


# What each synthesizer.method measures, one line each (the README's method section quotes these).
METHODS = {
    "mst": "MST: noisy 1-way marginals, a spanning tree of 2-way marginals chosen by the exponential mechanism, and "
           "those 2-way marginals, noisy (each on groups of codes when its cells would drown in the noise).",
    "mst-refined": "MST, then one AIM-style round that measures the 2-way marginals the tree model gets most wrong "
                   "(each on groups of codes when its cells would drown in the noise).",
    "aim": "AIM: noisy 1-way marginals (measured twice when the table is small for its budget), then rounds that "
           "each select (exponential mechanism) the workload marginal "
           "the current model gets most wrong for its noise and measure it (discrete Gaussian; a 2-way marginal whose "
           "cells would drown in the noise may be selected and measured on groups of codes), with a noise scale "
           "that shrinks when a measurement stops moving the model; the last round spends what is left.",
}


def method_text(method: str) -> str:
    """What ``method`` measures (every measurement noisy, every choice DP; covered by the guarantee)."""
    return METHODS[method]


def guarantee_text(privacy: dict[str, Any]) -> str:
    """The guarantee of one release, from its privacy record (the budget's figures)."""
    unit = privacy["privacy_unit"]
    rho = f"{privacy['rho']:.6g}"
    thresholds = privacy.get("delta_thresholds", 0.0)
    if thresholds > 0:
        zcdp = (
            f"approximate zCDP with rho = {rho} and delta = {thresholds:g} for the thresholding that discovered "
            f"categorical values"
        )
    else:
        zcdp = f"{rho}-zCDP"
    if "dpsgd" in privacy:
        zcdp = dpsgd_composition_text(privacy, zcdp)
    return (
        f"Releasing it (and the measurements it was made from) satisfies ({privacy['epsilon']:.6g}, "
        f"{privacy['delta']:g})-differential privacy, from {zcdp}, for the addition or removal of one privacy unit "
        f"({unit}) together with all of its rows; at most {privacy['max_rows_per_unit']} row(s) per unit were used. "
        f"These are the budget's figures, which hold whatever the data; the privacy profile gives epsilon at other "
        f"deltas from the same {'composition' if 'dpsgd' in privacy else 'rho'}."
    )


def values_text(discovered_values: Sequence[str]) -> str:
    """What the table's values are: generated from public domains, or, for columns whose categorical values were
    discovered, real values selected with DP."""
    text = "Every row was generated from noisy measurements; no real row was copied. "
    if not discovered_values:
        return text + "Every value comes from the spec's public domains or from bounds chosen with DP."
    cols = ", ".join(discovered_values)
    return text + (
        f"The categorical values of {cols} were discovered from the data: they are real values, each released only "
        f"because a noisy count of the units holding it passed a threshold (DP partition selection, covered by the "
        f"guarantee above). Every other value comes from the spec's public domains or from bounds chosen with DP."
    )


def statement_text(privacy: dict[str, Any], discovered_values: Sequence[str]) -> str:
    """The promise of one release, as its ``_release.json`` states it."""
    return f"Differentially private synthetic table. {guarantee_text(privacy)} {values_text(discovered_values)}"


# ----------------------------------------------------------------------------------------------------------------------
# Task-guided synthesis (dpbeam.task): the measurements composed with DP-SGD


def dpsgd_composition_text(privacy: dict[str, Any], zcdp: str) -> str:
    """How a task-guided release's guarantee is composed: the measurements' zCDP and DP-SGD, in Renyi DP."""
    d = privacy["dpsgd"]
    split = privacy["composition"]["split"]
    return (
        f"the Renyi-DP composition (dp_accounting's RDP accountant) of the measurements, {zcdp}, and the DP-SGD "
        f"training of the task model that drew the target column ({d['steps']} steps, each sampling every privacy "
        f"unit with probability {d['sample_rate']:g}, clipping each unit's summed gradient to L2 norm "
        f"{d['clip_norm']:g} and adding Gaussian noise of multiplier {d['noise_multiplier']:.4g}; "
        f"{d['budget_share']:.0%} of the budget by the split of rho; alone, at this delta, the measurements would "
        f"cost epsilon {split['measurements']['epsilon_alone']:.4g} and the training {split['dpsgd']['epsilon_alone']:.4g})"
    )


def task_model_text(privacy: dict[str, Any]) -> str:
    """The task model's own statement: what its weights satisfy alone, and the release it belongs to."""
    d = privacy["dpsgd"]
    unit = privacy["privacy_unit"]
    return (
        f"Differentially private task model. Its weights are the output of DP-SGD: {d['steps']} steps, each "
        f"sampling every privacy unit with probability {d['sample_rate']:g}, treating one unit's at most "
        f"{privacy['max_rows_per_unit']} bounded row(s) as one example whose summed loss gradient is clipped to L2 "
        f"norm {d['clip_norm']:g}, and adding Gaussian noise of multiplier {d['noise_multiplier']:.4g} (floating-point "
        f"noise, Opacus without secure mode). The training alone costs ({d['epsilon_alone']:.4g}, "
        f"{privacy['delta']:g})-differential privacy for the addition or removal of one privacy unit ({unit}) with "
        f"all of its rows. It was trained on codes of the release's domain after the measurements were taken (it uses "
        f"their DP compression of rare codes), so the guarantee that covers it is the release's: the measurements, "
        f"this model and the synthetic table together satisfy "
        f"({privacy['epsilon']:.6g}, {privacy['delta']:g})-differential privacy (the budget's figures, by Renyi-DP "
        f"composition). No real row or value is stored in it."
    )
