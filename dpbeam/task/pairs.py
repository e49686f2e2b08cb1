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
from noisy counts: the bound holds for the grouped cube too). The p pairs measured (the d - 1 pairs of the target,
less any that would outgrow the model: see below) share the stage's rho equally: sigma = k / sqrt(2 rho_stage / p),
so together they cost exactly the stage's rho, charged to :data:`STAGE` in the job's accountant (composed with the
other measurements in zCDP and with DP-SGD in Renyi DP). p and sigma are public (the spec, the column count, public
sizes and earlier DP outputs); nothing here depends on the data but the noisy outputs.

Model size. The pairs make the target a neighbour of every column, which can grow the model's junction tree past the
spec's ``max_model_cells`` (the refinement keeps to it). Pairs are kept in column order while the junction tree of the
cliques measured so far plus the pairs kept stays within it (:func:`pairs_that_fit`: public sizes after the
compression chosen from noisy counts, and earlier DP outputs: post-processing); the stage's rho is split over the pairs
kept (adaptive composition with the stage's total fixed in advance). If none fits, the stage's rho measures the
target's 1-way marginal once more (sensitivity k as well), so the stage still spends exactly its rho on every branch.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from dpbeam.measurements import MeasurementsArtifact, NoisyMarginal, estimated_total
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


def pairs_that_fit(
    pairs: list[tuple[str, str]], sizes: Mapping[str, int], measured: list[tuple[str, ...]], max_cells: int,
) -> list[tuple[str, str]]:
    """The pairs kept, in order, while the junction tree of ``measured`` plus the pairs kept has no clique of more than
    ``max_cells`` cells (:func:`dpbeam.synth.jtree.build`, mbi's elimination rule). Public: model sizes (the
    compression chosen from noisy counts) and the cliques of earlier DP outputs."""
    from dpbeam.synth import jtree

    kept: list[tuple[str, str]] = []
    for pair in pairs:
        if jtree.build(sizes, [*measured, *kept, pair]).max_cells <= max_cells:
            kept.append(pair)
    return kept


def measure_target_pairs(
    cubes: Mapping[tuple[str, ...], np.ndarray], domain: Any, k: int, accountant: ZCDPAccountant, target: str,
    base: MSTResult, progress: Callable[[str], None] | None = None, max_cells: int = 1_000_000,
) -> MSTResult:
    """``base`` plus one discrete Gaussian measurement of every (column, ``target``) 2-way marginal that keeps the
    model within ``max_cells`` (trusted side; :func:`pairs_that_fit`).

    Protects one privacy unit (all of its <= k bounded rows). Sensitivity: k in L2 per pair's cube. Spends the rho
    allotted to :data:`STAGE`, split equally over the pairs kept (rho = k^2 / (2 sigma^2) each; see the module doc),
    or, when none fits, on the target's 1-way marginal (sensitivity k, the same rho). Groups of codes for a pair that
    would drown in noise, if any, are chosen from the noisy 1-way counts and noisy row estimate already in ``base``
    (post-processing)."""
    from dpbeam.privacy.mst import compress_cube, measure_grouped
    from dpbeam.privacy.resolution import one_way_counts

    measurements: list[NoisyMarginal] = list(base.measurements)
    sizes = MeasurementsArtifact(domain, base.compression, tuple(measurements), {}, {}).model_sizes
    pairs = pairs_that_fit(target_pairs(domain.names, target), sizes, [tuple(m.clique) for m in measurements],
                           max_cells)
    rho = accountant.allotted(STAGE)
    if not pairs:  # no pair fits the model: the stage's rho goes to the target's own marginal
        sigma = gaussian_sigma(rho, k)
        if progress:
            progress(f"no pair with the target fits max_model_cells: measuring its 1-way marginal (sigma={sigma:.3g})")
        exact = compress_cube(cubes[(target,)], (target,), base.compression)
        measurements.append(measure_grouped((target,), exact, None, sigma, k, accountant, STAGE))
        return MSTResult(tuple(measurements), base.compression, base.tree, base.refined, expansion=base.expansion)
    sigma = gaussian_sigma(rho / len(pairs), k)
    if progress:
        progress(f"measuring the target's {len(pairs)} two-way marginals (sigma={sigma:.3g})")
    one_way = one_way_counts(measurements)
    total = estimated_total(measurements)
    for pair in pairs:
        measurements.append(measure_pair(pair, cubes, domain, base.compression, one_way, total, sigma, k, accountant,
                                         STAGE))
    return MSTResult(tuple(measurements), base.compression, base.tree, base.refined, expansion=base.expansion)
