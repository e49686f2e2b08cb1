"""MST (McKenna, Miklau & Sheldon 2021), written against exact cubes held on the trusted side.

Three stages, each a fraction of the job's rho (1/3 each by default):

1. ``mst.one_way``: every 1-way marginal, discrete Gaussian. d cubes of L2 sensitivity k each; with one scale
   sigma_1 = k sqrt(d / (2 rho_1)) the stage costs d k^2 / (2 sigma_1^2) = rho_1.
2. ``mst.select``: a maximum spanning tree over the columns. Edge (a, b) scores the L1 error of the independent
   model (built from stage 1's noisy counts only) on the exact a-b marginal. Adding or removing a unit moves an exact
   cube by at most k in L1 and the model is fixed post-processing, so every score has sensitivity k. The score is
   computed exactly: the model's marginal is rounded to integers first, then the L1 of integer differences is an
   integer sum (:func:`dpbeam.privacy.selection.l1_score`), so no float rounding can move it by more than k. Kruskal's
   algorithm picks d - 1 edges, each by the exponential mechanism with rho_2 / (d - 1).
3. ``mst.measure``: the d - 1 chosen 2-way marginals, discrete Gaussian with sigma_3 = k sqrt((d - 1) / (2 rho_3)).

Rare values are compressed between stages 1 and 3, as MST does: codes whose noisy count is below 3 sigma_1 merge into
one code per column. The choice reads only noisy counts (post-processing), and merging cells of a cube keeps its
sensitivity at k (all k rows can still fall in one cell, no more). The merged cell's 1-way measurement is re-expressed
as their noisy sum scaled by 1/sqrt(m) (m merged codes), so that it keeps noise scale sigma_1.

Total: rho_1 + rho_2 + rho_3 = rho, by zCDP composition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Callable, Mapping, Sequence

import numpy as np

from dpbeam.domain import TableDomain
from dpbeam.marginals import Clique
from dpbeam.measurements import NoisyMarginal
from dpbeam.privacy.accountant import ZCDPAccountant
from dpbeam.privacy.noise import add_discrete_gaussian, gaussian_sigma
from dpbeam.privacy.selection import exponential_mechanism, l1_score

DEFAULT_SPLIT = {"one_way": 1 / 3, "select": 1 / 3, "measure": 1 / 3}
# With refinement, chosen on Adult at eps = 1 (mean 2-way/3-way TVD over two runs each): refine 0.4 and the rest
# evenly over MST's stages gave 0.0388/0.0873 with one round of 2(d-1) cliques; 1/3 with d-1 cliques 0.0412/0.0914;
# 2 rounds of d-1 0.0392/0.0883; half the budget on 1-way and selection 0.0441/0.0953.
DEFAULT_REFINED_SPLIT = {"one_way": 0.2, "select": 0.2, "measure": 0.2, "refine": 0.4}
# When refinement does not pay (:func:`dpbeam.privacy.refine.refinement_pays`: a candidate pair's expected noise is
# above twice the noisy row count), the 2-way measurements are mostly noise too, and the 1-way marginals carry most
# of what can be learned: MST then runs with this split instead of thirds. Chosen on nlswork and movielens at eps = 1
# with by-hand domains (2-way TVD 3% and 2% below thirds; 0.8 one-way no better): benchmarks/RESULTS.md, issue 8,
# third pass.
LOW_SIGNAL_SPLIT = {"one_way": 0.6, "select": 0.2, "measure": 0.2}
STAGES = ("mst.one_way", "mst.select", "mst.measure")

Progress = Callable[[str], None]


TOTAL_SHARE = 0.01  # of rho, for the noisy row count that decides whether refinement pays (mst-refined only)


def mst_plan(n_columns: int, split: Mapping[str, float] | None = None, refine: bool = False) -> dict[str, float]:
    """The budget plan of MST's stages (and of the refinement stage and the row count that decides on it, when
    asked for). A single column needs no tree: it gets the whole budget for its 1-way marginal.

    Refinement measures pairs the spanning tree left out; with two columns the tree holds the only pair, so nothing
    is left to refine: such a plan is plain MST from the start (a ``refine`` share in ``split`` is dropped and the
    rest rescaled), and no budget sits in a stage that can never spend it."""
    if n_columns < 2:
        return {"mst.one_way": 1.0}
    if refine and n_columns <= 2:  # d (d - 1) / 2 pairs, d - 1 of them in the tree: none left when d <= 2
        refine = False
        if split is not None and "refine" in split:
            rest = {k: v for k, v in split.items() if k != "refine"}
            split = {k: v / sum(rest.values()) for k, v in rest.items()} if rest else None
    split = dict(split or (DEFAULT_REFINED_SPLIT if refine else DEFAULT_SPLIT))
    plan = {("refine" if k == "refine" else f"mst.{k}"): v for k, v in split.items()}
    if refine:
        plan = {"total": TOTAL_SHARE, **{s: f * (1 - TOTAL_SHARE) for s, f in plan.items()}}
    return plan


def required_cliques(names: list[str]) -> list[Clique]:
    """The exact cubes MST needs from the engine: every 1-way and every 2-way marginal."""
    return [(n,) for n in names] + list(combinations(names, 2))


@dataclass(frozen=True)
class MSTResult:
    measurements: tuple[NoisyMarginal, ...]
    compression: dict[str, np.ndarray]
    tree: tuple[tuple[str, str], ...]
    refined: tuple[tuple[str, ...], ...] = ()
    expansion: dict[str, np.ndarray] = field(default_factory=dict)  # see expansion_weights


def compress_rare(noisy: np.ndarray, threshold: float) -> np.ndarray | None:
    """The mapping original code -> model code that merges every code with noisy count < threshold into one
    code (the last), or None when fewer than two codes are rare."""
    keep = noisy >= threshold
    if (~keep).sum() <= 1:  # merging one code (or none) changes nothing
        return None
    mapping = np.empty(len(noisy), dtype=np.int64)
    mapping[keep] = np.arange(keep.sum())
    mapping[~keep] = keep.sum()
    return mapping


def expansion_weights(noisy: np.ndarray) -> np.ndarray:
    """How a merged code of rare values is spread back over its original codes when rows are decoded: in proportion
    to each code's noisy 1-way count, clipped at 0 (:meth:`dpbeam.measurements.MeasurementsArtifact.expand_codes`).
    The counts are the stage's own discrete Gaussian draws, already charged: releasing them is post-processing."""
    return np.clip(np.asarray(noisy, dtype=np.float64), 0.0, None)


def compressed_one_way(
    column: str, noisy: np.ndarray, mapping: np.ndarray, sigma: float, rho: float
) -> tuple[NoisyMarginal, np.ndarray]:
    """A noisy 1-way marginal in the compressed domain of ``mapping`` (post-processing of ``noisy``, already charged
    at ``rho``): the kept codes as they are and the merged codes' noisy sum, scaled by 1/sqrt(m) (m merged codes) so
    the measurement keeps noise scale ``sigma``. Returns the measurement and the unscaled compressed counts."""
    y = noisy.astype(np.float64)
    merged = mapping == mapping.max()
    m = int(merged.sum())
    counts = np.append(y[~merged], y[merged].sum())
    weights = np.ones(len(counts))
    weights[-1] = 1.0 / np.sqrt(m)
    return NoisyMarginal((column,), counts * weights, sigma, "discrete Gaussian", rho, weights=weights), counts


def compress_cube(cube: np.ndarray, clique: Clique, compression: Mapping[str, np.ndarray]) -> np.ndarray:
    """Sum the cells of a cube that compression merges (axis by axis)."""
    out = cube
    for axis, name in enumerate(clique):
        mapping = compression.get(name)
        if mapping is None:
            continue
        size = int(mapping.max()) + 1
        moved = np.moveaxis(out, axis, 0)
        summed = np.zeros((size,) + moved.shape[1:], dtype=out.dtype)
        np.add.at(summed, mapping, moved)
        out = np.moveaxis(summed, 0, axis)
    return out


def measure_pair(
    pair: tuple[str, str], cubes: Mapping[Clique, np.ndarray], domain: TableDomain,
    compression: Mapping[str, np.ndarray], one_way: Mapping[str, np.ndarray], total: float, sigma: float, k: int,
    accountant: ZCDPAccountant, stage: str,
) -> NoisyMarginal:
    """One 2-way marginal (compressed domain), discrete Gaussian at ``sigma``; on groups of codes when the whole
    pair's cells would drown in the noise (:func:`dpbeam.privacy.resolution.pair_groups`, chosen from the noisy
    1-way counts ``one_way`` and noisy ``total``: post-processing). Either way the measured cube moves by at most k
    in L2 when one unit is added or removed, so it costs rho = k^2 / (2 sigma^2), charged to ``stage``."""
    from dpbeam.privacy.resolution import pair_groups

    groups = pair_groups(pair, domain, compression, one_way, sigma, total)
    return measure_grouped(pair, compress_cube(cubes[pair], pair, compression), groups, sigma, k, accountant, stage)


def measure_grouped(
    clique: Clique, exact: np.ndarray, groups: Sequence[np.ndarray] | None, sigma: float, k: int,
    accountant: ZCDPAccountant, stage: str,
) -> NoisyMarginal:
    """The exact cube of ``clique`` (model domain), its cells summed within ``groups`` when given (chosen from public
    sizes and earlier DP outputs), plus discrete Gaussian noise of scale ``sigma`` on every cell, charged to ``stage``.

    Protects: the clique's cube. Sensitivity: one unit (<= k rows) moves the cube by at most k in L2 (all k rows in
    one cell is the worst case); summing cells within groups cannot spread a row over two cells, so the grouped cube's
    L2 sensitivity is k as well. Cost: rho = k^2 / (2 sigma^2) either way."""
    from dpbeam.privacy.resolution import coarse_cube

    if groups is not None:
        exact = coarse_cube(exact, groups)
    noisy, rho = add_discrete_gaussian(exact, sigma, k)
    accountant.charge(stage, "discrete Gaussian", rho, clique=list(clique), sigma=sigma, sensitivity_l2=k,
                      **({"groups": [int(g.max()) + 1 for g in groups]} if groups is not None else {}))
    return NoisyMarginal(tuple(clique), noisy.astype(np.float64), sigma, "discrete Gaussian", rho,
                         groups=None if groups is None else tuple(groups))


def project_simplex(v: np.ndarray, total: float) -> np.ndarray:
    """The Euclidean projection of v onto {x >= 0, sum(x) = total} (Duchi et al. 2008)."""
    if total <= 0:
        return np.zeros_like(v, dtype=np.float64)
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - total
    ind = np.arange(1, len(v) + 1)
    cond = u - css / ind > 0
    theta = css[cond][-1] / ind[cond][-1]
    return np.maximum(v - theta, 0.0)


def independent_estimate(one_way: Mapping[str, np.ndarray], sigma: float) -> tuple[dict[str, np.ndarray], float]:
    """Per-column probability vectors and a total, from noisy 1-way counts in the model domain (post-processing).

    The total is the inverse-variance weighted mean of the columns' noisy sums (a column of s cells has sum
    variance s sigma^2); each column is projected onto the simplex of that total."""
    sums = np.array([v.sum() for v in one_way.values()])
    var = np.array([v.size for v in one_way.values()], dtype=np.float64) * sigma**2
    total = max(1.0, float(np.sum(sums / var) / np.sum(1 / var)))
    probs = {n: project_simplex(v.astype(np.float64), total) / total for n, v in one_way.items()}
    return probs, total


def run_mst(
    cubes: Mapping[Clique, np.ndarray],
    domain: TableDomain,
    k: int,
    accountant: ZCDPAccountant,
    progress: Progress | None = None,
) -> MSTResult:
    """Run MST's three stages on exact cubes (trusted side); return the noisy measurements and compression.

    ``cubes`` must hold every 1-way and 2-way marginal of the bounded table (see :func:`required_cliques`).
    """
    say = progress or (lambda _msg: None)
    names = domain.names
    d = len(names)

    # Stage 1: noisy 1-way marginals over the full domain.
    rho1 = accountant.allotted("mst.one_way")
    sigma1 = gaussian_sigma(rho1 / d, k)
    say(f"measuring {d} one-way marginals (sigma={sigma1:.3g})")
    noisy1: dict[str, np.ndarray] = {}
    for n in names:
        noisy1[n], rho = add_discrete_gaussian(cubes[(n,)], sigma1, k)
        accountant.charge("mst.one_way", "discrete Gaussian", rho, clique=[n], sigma=sigma1, sensitivity_l2=k)

    # Compression of rare codes: a function of noisy counts only.
    compression: dict[str, np.ndarray] = {}
    expansion: dict[str, np.ndarray] = {}
    for n in names:
        mapping = compress_rare(noisy1[n], 3 * sigma1)
        if mapping is not None:
            compression[n] = mapping
            expansion[n] = expansion_weights(noisy1[n])

    measurements: list[NoisyMarginal] = []
    model_one_way: dict[str, np.ndarray] = {}
    for n in names:
        y = noisy1[n].astype(np.float64)
        rho = rho1 / d
        mapping = compression.get(n)
        if mapping is None:
            measurements.append(NoisyMarginal((n,), y, sigma1, "discrete Gaussian", rho))
            model_one_way[n] = y
            continue
        measurement, model_one_way[n] = compressed_one_way(n, y, mapping, sigma1, rho)
        measurements.append(measurement)

    tree: list[tuple[str, str]] = []
    if d >= 2:
        # Stage 2: choose a spanning tree with the exponential mechanism.
        probs, total = independent_estimate(model_one_way, sigma1)
        pairs = list(combinations(names, 2))
        scores = {}
        for a, b in pairs:
            exact = compress_cube(cubes[(a, b)], (a, b), compression)
            scores[(a, b)] = l1_score(exact, total * np.outer(probs[a], probs[b]))  # exact integer, sensitivity k
        rho2 = accountant.allotted("mst.select") / (d - 1)
        say(f"selecting a spanning tree over {len(pairs)} pairs")
        component = {n: n for n in names}

        def find(x: str) -> str:
            while component[x] != x:
                component[x] = component[component[x]]
                x = component[x]
            return x

        for _ in range(d - 1):
            candidates = [p for p in pairs if find(p[0]) != find(p[1])]
            idx, rho = exponential_mechanism([scores[p] for p in candidates], sensitivity=k, rho=rho2)
            a, b = candidates[idx]
            accountant.charge("mst.select", "exponential mechanism (Gumbel noisy max)", rho, candidates=len(candidates),
                              sensitivity=k)
            tree.append((a, b))
            component[find(a)] = find(b)

        # Stage 3: noisy 2-way marginals on the tree.
        rho3 = accountant.allotted("mst.measure")
        sigma3 = gaussian_sigma(rho3 / (d - 1), k)
        say(f"measuring {d - 1} two-way marginals (sigma={sigma3:.3g})")
        for a, b in tree:
            measurements.append(measure_pair((a, b), cubes, domain, compression, model_one_way, total, sigma3, k,
                                             accountant, "mst.measure"))

    return MSTResult(tuple(measurements), compression, tuple(tree), expansion=expansion)
