"""The target's 2-way marginals: a task section's measurements on the trusted side (``task.pairs_share``).

MST's tree and the refinement choose pairs for the table as a whole; the marginal model's conditional of the target
given a row (which labels the synthetic rows, alone or pooled with the task model: :mod:`dpbeam.task.guide`) then
rests on the few pairs that happen to hold the target. :func:`measure_target_pairs` measures every pair (column,
target) once more, so the marginal model's conditional is a log-linear model in every column, fitted together with
the rest of the table. On Adult at epsilon 1 (benchmarks/RESULTS.md, second pass) pairs_share 0.67 raised the
accuracy of the marginal model's own labels by 0.16 ± 0.06 points and their AUC by 0.39 ± 0.09, but pooled with the
task model at mix 0.75 it added no accuracy (MST and its refinement had already measured most of the target's
pairs), so it is off by default.

Mechanism. What it protects: one privacy unit with all of its (at most k) bounded rows. Each pair's exact cube, in
the model domain (the compression chosen from noisy 1-way counts, a DP output), moves by at most k in L2 when one
unit is added or removed (worst case: all k rows in one cell), so each discrete Gaussian release at scale sigma costs
rho = k^2 / (2 sigma^2) (:func:`dpbeam.privacy.mst.measure_pair`, which may measure a pair on groups of codes chosen
from noisy counts: the bound holds for the grouped cube too). The d - 1 pairs share the stage's rho equally:
sigma = k / sqrt(2 rho_stage / (d - 1)), so together they cost exactly the stage's rho, charged to
:data:`STAGE` in the job's accountant (composed with the other measurements in zCDP and with DP-SGD in Renyi DP).
The number of pairs and sigma are public (the spec and the column count); nothing here depends on the data but the
noisy outputs.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from dpbeam.measurements import NoisyMarginal, estimated_total
from dpbeam.privacy.accountant import ZCDPAccountant
from dpbeam.privacy.mst import MSTResult, measure_pair
from dpbeam.privacy.noise import gaussian_sigma

STAGE = "task.pairs"


def with_pairs_stage(plan: Mapping[str, float], fraction: float) -> dict[str, float]:
    """The zCDP plan with :data:`STAGE` given ``fraction`` of the measurements' rho and every other stage scaled by
    ``1 - fraction`` (a public function of the spec)."""
    if not 0 < fraction < 1:
        raise ValueError("the pairs' fraction must be in (0, 1)")
    return {**{s: f * (1.0 - fraction) for s, f in plan.items()}, STAGE: fraction}


def target_pairs(names: list[str], target: str) -> list[tuple[str, str]]:
    """Every pair of ``target`` with another column, each in the column order of the counted cubes."""
    j = names.index(target)
    return [(n, target) if i < j else (target, n) for i, n in enumerate(names) if i != j]


def measure_target_pairs(
    cubes: Mapping[tuple[str, ...], np.ndarray], domain: Any, k: int, accountant: ZCDPAccountant, target: str,
    base: MSTResult, progress: Callable[[str], None] | None = None,
) -> MSTResult:
    """``base`` plus one discrete Gaussian measurement of every (column, ``target``) 2-way marginal (trusted side).

    Protects one privacy unit (all of its <= k bounded rows). Sensitivity: k in L2 per pair's cube. Spends the rho
    allotted to :data:`STAGE`, split equally over the d - 1 pairs (rho = k^2 / (2 sigma^2) each; see the module doc).
    Groups of codes for a pair that would drown in noise, if any, are chosen from the noisy 1-way counts and noisy
    row estimate already in ``base`` (post-processing)."""
    from dpbeam.privacy.resolution import one_way_counts

    names = domain.names
    pairs = target_pairs(names, target)
    sigma = gaussian_sigma(accountant.allotted(STAGE) / len(pairs), k)
    if progress:
        progress(f"measuring the target's {len(pairs)} two-way marginals (sigma={sigma:.3g})")
    measurements: list[NoisyMarginal] = list(base.measurements)
    one_way = one_way_counts(measurements)
    total = estimated_total(measurements)
    for pair in pairs:
        measurements.append(measure_pair(pair, cubes, domain, base.compression, one_way, total, sigma, k, accountant,
                                         STAGE))
    return MSTResult(tuple(measurements), base.compression, base.tree, base.refined, expansion=base.expansion)
