"""Adaptive refinement after MST: measure the 2-way marginals the current model gets most wrong (AIM-style).

A spanning tree cannot express every dependence (on Adult even a noiseless tree leaves a mean 2-way TVD of ~0.042).
After MST, each round fits Private-PGM to the noisy measurements made so far (post-processing, on the trusted side),
scores every unmeasured pair and measures the worst ones:

- score of clique r: ||M_r(D) - M_r(model)||_1 - sqrt(2/pi) sigma n_r, where M_r(D) is the exact (compressed) marginal,
  n_r its number of cells and sigma the noise scale a measurement of r would get. The penalty is AIM's (McKenna et al.
  2022): the expected L1 error of measuring r, so large cliques must earn their noise. The model and the penalty are
  fixed before the exact marginal is looked at, so the score moves by at most k when one unit (<= k rows) is added
  or removed: sensitivity k. Both terms are integers (the L1 exactly, by ``l1_score`` on the model rounded to
  integers; the penalty rounded up), so the sensitivity holds exactly.
- cliques are picked one at a time by the exponential mechanism (rho_sel each), among candidates that keep the
  model's largest junction-tree clique within ``max_cells`` and all its junction-tree cells together within
  ``max_total_cells`` (public limits applied to public sizes and earlier DP outputs, so the filter is free); the
  filter bounds every candidate from one junction tree per draw, O(d^2) per draw (see :func:`_select`). The total is
  what one inference pass of the fit touches: without it a wide table's 2 (d - 1) picks made a model whose fit cost
  grew past the rest of the job (50 columns: 4.5M cells, 0.4 CPU s per iteration of the final fit).
- each picked clique is measured with the discrete Gaussian, L2 sensitivity k (rho_meas each).

Per round: up to ``per_round`` selections at rho_sel = 0.1 rho_round / per_round each; the rest of rho_round is split
evenly over the cliques chosen, so a round spends exactly rho_round and the stage exactly its allotment.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Callable, Mapping

import numpy as np

from dpbeam.domain import TableDomain
from dpbeam.marginals import Clique
from dpbeam.measurements import MeasurementsArtifact, estimated_total
from dpbeam.privacy.accountant import ZCDPAccountant
from dpbeam.privacy.mst import MSTResult, compress_cube, measure_pair
from dpbeam.privacy.resolution import one_way_counts
from dpbeam.privacy.noise import add_discrete_gaussian, gaussian_sigma
from dpbeam.privacy.selection import exponential_mechanism, l1_score

STAGE = "refine"
SELECT_SHARE = 0.1
# Refinement pays off when a typical candidate pair can be measured with little noise relative to the table. Judged
# before MST starts, on the full domain sizes (compression is not known yet): the median over pairs of
# sqrt(2/pi) sigma cells / N, the expected L1 noise of measuring the pair over the noisy row count. On Adult it is
# 3.7 at eps = 0.1, where refinement lost (mean 2-way TVD 0.164-0.174 vs MST's 0.146), 1.3 at eps = 0.3 (0.077 vs
# 0.079) and 0.4 at eps = 1 (0.039 vs 0.051); the limit sits between, near their geometric mean.
MAX_MEDIAN_NOISE = 2.0
# The default limit on the model's junction-tree cells, all cliques together, per column: the fit's time per
# iteration grows with it (~80 ns of CPU per cell per mirror-descent iteration, measured on the 50-column benchmark
# table), so a limit linear in the columns keeps the fit linear in them: 50 columns, 250,000 cells, ~0.02 CPU s per
# iteration.
TOTAL_CELLS_PER_COLUMN = 5_000


def default_total_cells(columns: int, max_cells: int) -> int:
    """The default limit on the model's junction-tree cells, all cliques together: :data:`TOTAL_CELLS_PER_COLUMN`
    per column, and never less than the limit on one clique (``max_cells``, the spec's ``max_model_cells``). The
    per-column term keeps a wide table's fit linear in its columns; the floor lets a narrow table's model grow as
    large as one clique may (Adult at eps = 10: 70,000 cells at 5,000 per column cost 0.007 of mean 2-way TVD,
    0.030 against 0.0235 without a limit and 0.0244 at 1,000,000; benchmarks/RESULTS.md, issue 8, fourth pass)."""
    return max(TOTAL_CELLS_PER_COLUMN * columns, max_cells)


def refinement_pays(sizes: Mapping[str, int], total: float, rho: float, k: int, per_round: int) -> bool:
    """Whether refinement is worth its budget, judged from public quantities only: domain sizes, a noisy row count
    and the noise scale a refined measurement would get."""
    sigma = gaussian_sigma((1 - SELECT_SHARE) * rho / per_round, k)
    noise = [math.sqrt(2 / math.pi) * sigma * sizes[a] * sizes[b] / total for a, b in combinations(sizes, 2)]
    return bool(noise) and float(np.median(noise)) <= MAX_MEDIAN_NOISE


def decide_refinement(
    cubes: Mapping[Clique, np.ndarray], domain: TableDomain, k: int, accountant: ZCDPAccountant,
    per_round: int | None = None, rounds: int = 1,
) -> bool:
    """Release a noisy row count (the ``total`` stage: one discrete Gaussian, L2 sensitivity k) and decide from it
    whether refinement pays. If not, every MST and refinement stage that has not spent is replanned to MST's
    low-signal split (:data:`dpbeam.privacy.mst.LOW_SIGNAL_SPLIT`; any other stage, such as a task section's pairs,
    keeps its rho): the choice reads only the noisy count and public sizes, so the
    replan keeps the privacy-filter argument of :meth:`ZCDPAccountant.replan`."""
    from dpbeam.privacy.mst import LOW_SIGNAL_SPLIT

    first = domain.names[0]
    exact = np.asarray([int(cubes[(first,)].sum())])
    sigma = gaussian_sigma(accountant.allotted("total"), k)
    noisy, rho = add_discrete_gaussian(exact, sigma, k)
    accountant.charge("total", "discrete Gaussian (row count)", rho, sigma=sigma, sensitivity_l2=k)
    sizes = {n: domain[n].size for n in domain.names}
    per_round = per_round or max(1, 2 * (len(sizes) - 1))
    if refinement_pays(sizes, max(1.0, float(noisy[0])), accountant.allotted(STAGE) / rounds, k, per_round):
        return True
    # a task section's stages (its pairs: dpbeam.task.pairs) keep their rho; MST's and the refinement's are replanned
    others = {s: f for s, f in accountant.plan.items() if s.startswith("task.") and accountant.spent(s) == 0}
    free = sum(f for s, f in accountant.plan.items() if accountant.spent(s) == 0)
    keep = {s: f / free for s, f in others.items()}
    accountant.replan({**{f"mst.{s}": f * (1.0 - sum(keep.values())) for s, f in LOW_SIGNAL_SPLIT.items()}, **keep})
    return False


def run_refinement(
    cubes: Mapping[Clique, np.ndarray],
    domain: TableDomain,
    k: int,
    accountant: ZCDPAccountant,
    base: MSTResult,
    rounds: int = 1,
    per_round: int | None = None,
    max_cells: int = 1_000_000,
    fit_iters: int = 1000,
    progress: Callable[[str], None] | None = None,
    max_total_cells: int | None = None,
) -> MSTResult:
    """Add ``rounds`` x ``per_round`` (default: 2 (columns - 1)) adaptively chosen 2-way measurements to ``base``,
    keeping the model's largest junction-tree clique within ``max_cells`` and its cells together within
    ``max_total_cells`` (default: :func:`default_total_cells`)."""
    from dpbeam.synth import pgm  # the trusted side may use post-processing; the reverse is what is forbidden

    say = progress or (lambda _msg: None)
    names = domain.names
    per_round = per_round or max(1, 2 * (len(names) - 1))
    max_total_cells = max_total_cells or default_total_cells(len(names), max_cells)
    measurements = list(base.measurements)
    compression = base.compression
    rho_round = accountant.allotted(STAGE) / rounds
    rho_sel = SELECT_SHARE * rho_round / per_round
    # the noise scale a measurement gets when the round picks all per_round cliques (used in the score penalty)
    sigma = gaussian_sigma((1 - SELECT_SHARE) * rho_round / per_round, k)
    picked: list[Clique] = []
    for r in range(rounds):
        artifact = MeasurementsArtifact(domain, compression, tuple(measurements), {}, {})
        say(f"refinement round {r + 1}/{rounds}: fitting the current model")
        model = pgm.fit(artifact, iters=fit_iters)
        measured = {tuple(m.clique) for m in measurements}
        candidates = [c for c in combinations(names, 2) if c not in measured]
        sizes = artifact.model_sizes
        scores = {}
        estimates = model.pair_marginals(candidates)
        for c in candidates:
            # exact integer score (l1_score: the model rounded to integers, sensitivity exactly k) minus the public
            # penalty rounded up to an integer
            cells = sizes[c[0]] * sizes[c[1]]
            penalty = math.ceil(math.sqrt(2 / math.pi) * sigma * cells)
            scores[c] = l1_score(compress_cube(cubes[c], c, compression), estimates[c]) - penalty
        chosen = _select(candidates, scores, sizes, [tuple(m.clique) for m in measurements], per_round, max_cells,
                         k, rho_sel, accountant, max_total_cells)
        if not chosen:
            break
        # the rest of the round's budget goes to the cliques chosen (all per_round of them, unless the cell limit
        # stopped selection early)
        left = accountant.allotted(STAGE) * (r + 1) / rounds - accountant.spent(STAGE)
        sigma_r = gaussian_sigma(left / len(chosen), k)
        say(f"refinement round {r + 1}/{rounds}: measuring {len(chosen)} two-way marginals (sigma={sigma_r:.3g})")
        one_way = one_way_counts(measurements)
        total = estimated_total(measurements)
        for c in chosen:
            measurements.append(measure_pair(c, cubes, domain, compression, one_way, total, sigma_r, k, accountant,
                                             STAGE))
        picked.extend(chosen)
    return MSTResult(tuple(measurements), compression, base.tree, tuple(picked), expansion=base.expansion)


def _select(
    candidates: list[Clique], scores: Mapping[Clique, float], sizes: Mapping[str, int], measured: list[Clique],
    per_round: int, max_cells: int, k: int, rho_sel: float, accountant: ZCDPAccountant,
    max_total_cells: int | None = None,
) -> list[Clique]:
    """Up to ``per_round`` cliques, one exponential mechanism each (rho_sel, scores of sensitivity k), among the
    candidates whose addition keeps the model's largest junction-tree clique within ``max_cells`` and the cells of
    all its junction-tree cliques within ``max_total_cells`` (no limit when None; a pair that a clique already holds
    adds no cells and always passes).

    The filter never builds a junction tree per candidate. Each draw starts from the junction tree of the cliques
    measured and chosen so far (:func:`dpbeam.synth.jtree.build`, mbi's own elimination rule), bounds the largest
    clique every candidate would create from that tree in one pass (:meth:`~dpbeam.synth.jtree.JunctionTree.
    edge_bounds`: an upper bound, so no candidate that passes it is too big for that tree), and keeps the candidates
    within ``max_cells`` (and, with :meth:`~dpbeam.synth.jtree.JunctionTree.edge_total_bounds`, within
    ``max_total_cells``). Only the one clique drawn is checked exactly, by building the tree with it, which is also
    the next draw's tree. mbi's greedy triangulation is a heuristic and may do worse than the bound; a drawn clique
    that fails the exact check is discarded (it is not measured and leaves the candidates), and its draw counts
    towards ``per_round``, so the round never spends more than planned.

    Cost per draw: one O(d^2) tree build plus O(d^2) numpy work for the bounds, so O(per_round d^2) for the round
    (d columns), instead of a junction-tree build per candidate (O(per_round d^2) builds).

    Privacy: the candidate set at each draw is a function of public information only (domain sizes after the
    compression chosen from noisy counts, ``max_cells``) and of earlier DP outputs (MST's measured cliques, the
    cliques drawn before): no exact count enters it, so filtering is free and each draw costs exactly rho_sel.
    """
    from dpbeam.synth import jtree

    names = list(sizes)
    col = {n: j for j, n in enumerate(names)}
    limit = math.log(max_cells) + 1e-9
    candidates = list(candidates)
    first = np.asarray([col[c[0]] for c in candidates], dtype=np.int64)
    second = np.asarray([col[c[1]] for c in candidates], dtype=np.int64)
    score = np.asarray([scores[c] for c in candidates], dtype=np.float64)
    left = np.ones(len(candidates), dtype=bool)
    chosen: list[Clique] = []
    tree = jtree.build(sizes, measured)
    for _ in range(per_round):
        ok = left & (tree.edge_bounds()[first, second] <= limit)
        if max_total_cells is not None:
            ok &= tree.edge_total_bounds()[first, second] <= max(max_total_cells, tree.total_cells) * (1 + 1e-9)
        fits = np.flatnonzero(ok)
        if not len(fits):
            break
        idx, rho = exponential_mechanism(score[fits], sensitivity=float(k), rho=rho_sel)
        accountant.charge(STAGE, "exponential mechanism (Gumbel noisy max)", rho, candidates=len(fits),
                          sensitivity=k)
        drawn = candidates[fits[idx]]
        left[fits[idx]] = False
        grown = jtree.build(sizes, measured + chosen + [drawn])
        if grown.max_cells <= max_cells and (max_total_cells is None
                                             or grown.total_cells <= max(max_total_cells, tree.total_cells)):
            chosen.append(drawn)
            tree = grown
    return chosen
