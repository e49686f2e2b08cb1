"""AIM (McKenna, Mullins, Sheldon & Miklau, VLDB 2022) on exact cubes held on the trusted side.

The workload W is a weighted list of cliques (default: every 2-way marginal; see :func:`workload`). Candidates are
its downward closure C (every non-empty subset of a workload clique); each candidate r has the public weight
w_r = sum_{s in W} c_s |r n s| (integers: see :func:`candidate_weights`).

The loop, all in one budget stage (``aim``, rho_A = its allotment), T = 16 d initial rounds, alpha = 0.9:

1. The 1-way round: every 1-way marginal, discrete Gaussian of scale sigma (L2 sensitivity k each, rho_1 each), with
   rho_1 = ONE_WAY_SHARE rho_A / d (AIM's alpha rho_A / T when the share is None). Low signal (:func:`low_signal`, a
   function of public sizes and of the noisy row count of these measurements, so free): every column is measured
   again, discrete Gaussian, L2 sensitivity k, at rho_2 = LOW_SIGNAL_SHARE rho_A / d each, and the two noisy vectors
   are averaged by inverse variance (post-processing; scale (1/sigma_1^2 + 1/sigma_2^2)^(-1/2)). Rare codes
   (estimate below 3 times that scale) merge into one code per column, as in MST: a function of noisy counts only.
   The rounds then start from rho_round = rho_L / T, rho_L what is left of rho_A.
2. Each round t: fit the model to every measurement so far (post-processing; :func:`dpbeam.synth.pgm.fit_problem`, warm
   started, until the fit's convergence rule stops it or ROUND_ITERS iterations), then
   - select r among the candidates whose model stays under a size cap, max_model_cells x (rho spent / rho_A): the
     junction tree of the measured cliques plus r, total cells of its maximal cliques. A candidate the model already
     covers never grows it, so the 1-way cliques always pass. The candidate set is a function of public sizes and
     earlier DP outputs only, so the filter is free.
   - offer every such candidate whole and, when the rounds are noisy for the table (:func:`median_pair_noise` at the
     rounds' first sigma at least GROUPED_SIGNAL, decided once from public sizes and DP outputs), a 2-way candidate
     whose full cube at the round's sigma would drown in noise (expected noise TVD above a limit of GROUP_NOISE_TVD)
     also on groups of codes (:func:`offers`): Q_r sums the cells within groups, the groups chosen by
     :func:`dpbeam.privacy.resolution.pair_groups` from public sizes and kinds, sigma, the noisy 1-way counts and the
     noisy row estimate (post-processing, free). Q_r is the identity for a whole candidate. A pair measured on groups
     stays offered whole in later rounds.
   - score q_r = w_r (||Q_r M_r(D) - round(Q_r M_r(model))||_1 - ceil(sqrt(2/pi) sigma n_r)), n_r the cells of Q_r
     M_r (the grouped cells for a grouped candidate): the model's L1 error minus the L1 error a measurement at sigma
     is expected to have, both integers (the L1 exactly, by :func:`dpbeam.privacy.selection.l1_score`). Sensitivity:
     the model, Q_r and the penalty are fixed before the exact cube is read; one unit (<= k rows) moves M_r(D) by at
     most k in L1, and summing cells within groups cannot increase that (each row still lands in one cell), so q_r
     moves by at most w_r k <= Delta = k max_r w_r, grouped or not. The exponential mechanism (OpenDP's Gumbel noisy
     max, integer scores, d_in = Delta) picks among all offers at rho_s = (1 - alpha) rho_round.
   - measure Q_r M_r(D) with the discrete Gaussian (:func:`measure`): L2 sensitivity k (all k rows of a unit in one
     cell is the worst case, grouped or not), at rho_m = alpha rho_round = k^2 / (2 sigma^2). The measurement carries
     its groups; the fit takes it as y = Q mu (:class:`dpbeam.synth.mirror.Measured`).
   - anneal: if the refitted model's (grouped) marginal Q_r M_r moved by at most sqrt(2/pi) sigma n_r in L1 (the
     measurement told the model little), rho_round grows by ANNEAL (AIM: 4, sigma halves; here 2, sigma / sqrt 2).
     The size cap counts the junction tree, which grows by the full clique either way.
   - last round: when what is left of rho_A is less than 2 rho_round, or when ``max_minutes`` have passed, the round
     spends exactly what is left (alpha of it on the measurement) and the loop ends.

Privacy (a zCDP privacy filter). rho_A is fixed before the run. Whether the 1-way marginals are measured a second
time, and each round's rho_round, sigma, candidate set (groups included) and whether it is the last are chosen from
earlier outputs
(the measurements, the selections, the models fitted to them; and, for the time cap, the clock: see below) and the
public spec. Every release is charged to the accountant, which refuses, before noise is drawn, any charge that would
take the stage past rho_A (compared exactly); the last round is sized to the remainder, so the charges sum to rho_A
(to the few ulps by which each mechanism's scale errs safe) on every branch: the normal end, an anneal into the last
round, the time cap, with or without the low-signal second 1-way measurement (ONE_WAY_SHARE + LOW_SIGNAL_SHARE < 1
leaves the rounds a share). A rho-zCDP budget is a Renyi budget of rho alpha' at every order alpha', and Renyi
filters (Feldman & Zrnic 2021, Thm 3.1) allow each mechanism's parameters to depend on earlier outputs as long as
the sum stays within the budget at every order: the adaptive composition is rho_A-zCDP. The reported epsilon is the
budget's.

The time cap reads a clock started after the exact cubes are counted. What the loop does before it (fit, score,
select, measure) works on arrays whose shapes are public domain sizes or follow from earlier DP outputs (the
compression, the measured cliques), so when it fires depends on those outputs and on the machine, not on the rows
(timing is outside the promise in any case: see the README's threat model).

Rows of the artifact: every measurement, and a round log (round, clique, sigma, rho of the selection and of the
measurement, candidates, whether the round annealed, whether it was the last, the group counts of a grouped
measurement): all DP outputs or public.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import combinations
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dpbeam.domain import TableDomain
from dpbeam.errors import SpecError
from dpbeam.marginals import Clique
from dpbeam.measurements import NoisyMarginal, estimated_total
from dpbeam.privacy.accountant import ZCDPAccountant
from dpbeam.privacy.mst import (compress_cube, compress_rare, compressed_one_way, expansion_weights,
                               measure_grouped)
from dpbeam.privacy.noise import add_discrete_gaussian, gaussian_sigma
from dpbeam.privacy.resolution import coarse_cube, one_way_counts, pair_groups
from dpbeam.privacy.selection import exponential_mechanism, l1_score

STAGE = "aim"
ALPHA = 0.9  # share of a round's rho for its measurement (AIM's alpha)
ROUNDS_PER_COLUMN = 16  # T = 16 d initial rounds (AIM's default)
# The 1-way round's share of the budget (None: AIM's d alpha / T, 5.6% with T = 16 d). As MST's first stage, a third
# or so: on Adult (one run each, loaded 2-core machine) AIM's share gave mean 2-way TVD 0.216 / 0.044-0.047 / 0.031 at
# eps 0.1 / 1 / 10, a share of 0.3 gave 0.130 / 0.040 / 0.034, 0.5 gave 0.124 at eps 0.1.
ONE_WAY_SHARE: float | None = 0.3
# A refit runs until the fit's own convergence rule stops it (:data:`dpbeam.synth.pgm.PATIENCE`), at most ROUND_ITERS
# mirror-descent iterations, warm started. Issue 14's diagnosis: a fixed 50 iterations left the model's L1 error on the
# clique just measured at 5-57x the noise at eps 10 on Adult, so the selection kept re-measuring what the fit had not
# absorbed and the anneal rule fired on measurements the model had not taken in (the loop ended after ~25 rounds);
# converged refits give ~45 rounds and 2-way TVD 0.020 against 0.024 (3 runs each, same final fit).
ROUND_ITERS = 1000
# mirror descent's step-size growth after each accepted step in a refit (mbi's 1.01 barely moves a warm step size)
FIT_GROWTH = 1.1
# rho_round grows by this factor on an anneal. AIM's 4 (sigma halves, the selection's epsilon doubles) ended Adult
# runs after ~20 rounds; 2 gave 0.0317 / 0.0790 mean 2-way / 3-way TVD at eps 10 against 0.0343 / 0.0833 (one run each)
ANNEAL = 2
# Low signal: after the first 1-way measurements, if a typical column pair measured at the rounds' first sigma would
# carry more L1 noise than LOW_SIGNAL_NOISE times the noisy row count N (the median over pairs of sqrt(2/pi) sigma
# n_a n_b / N, public domain sizes before compression), the rounds cannot pay for their noise and the 1-way marginals
# are measured once more, at LOW_SIGNAL_SHARE of the budget. On Adult the median is 8.1 at eps 0.1, 2.8 at 0.3 and 0.88
# at 1; measuring twice gave 2-way / 3-way TVD 0.1065 / 0.1843 at eps 0.1 against 0.1396 / 0.2255 without, and at eps
# 0.3 0.0639 / 0.1284 against 0.0646 / 0.1237 (3 runs each): the limit sits between 2.8 and 8.1. (A larger first share
# instead, 0.6 / 0.85, gave 0.1086 / 0.1070 at eps 0.1, but 0.5 cost 0.0209 against 0.0203 at eps 10.)
LOW_SIGNAL_NOISE = 4.5
LOW_SIGNAL_SHARE = 0.5
# Rare codes merge below COMPRESS_AT times the 1-way noise scale (MST's 3). Adult, 3 runs each: 1.5 gave 2-way TVD
# 0.0366 / 0.1014 at eps 1 / 0.1 against 3's 0.0373-0.0384 / 0.1065, but 0.0212 against 0.0203 at eps 10; 0.75, 0 and 5
# gave 0.0370, 0.0390 and 0.0413 at eps 1. Within the runs' spread, so MST's rule stays.
COMPRESS_AT = 3.0
# A 2-way candidate is also offered on groups of codes when its full cube measured at the round's sigma would carry an
# expected noise TVD above a limit (:func:`dpbeam.privacy.resolution.pair_groups`; the groups hold at most the cells
# the limit allows), once per limit here (a coarser and a finer grouping; the same groups are offered once). MST and
# the refinement use one limit, resolution.MAX_NOISE_TVD = 0.1. Adult, mean 2-way / 3-way TVD (eps 1: 3 runs each;
# eps 0.1: 6 runs, spread (sd) 0.002-0.003): no grouped offers 0.0363 / 0.0837 at eps 1 and 0.0987 at eps 0.1 (3 runs);
# 0.1 alone 0.0352 / 0.0812 and 0.0980; 0.05 alone 0.0348 / 0.0793 and 0.1004; (0.1, 0.05) 0.0345 / 0.0790 and 0.0982;
# 0.2 0.0354, 0.025 0.0355 and (0.1, 0.03) 0.0350 at eps 1.
GROUP_NOISE_TVD: tuple[float, ...] = (0.1, 0.05)
# Grouped offers are made only when the rounds are noisy for the table: the median over column pairs of sqrt(2/pi)
# sigma n_a n_b / N at the rounds' first sigma (:func:`median_pair_noise`, the low-signal rule's quantity) is at least
# this. On Adult it is 8.1 at eps 0.1, 0.88 at 1, 0.31 at 3 and 0.10 at 10. At eps 10 grouped offers gave 2-way /
# 3-way TVD 0.0211 / 0.0599 (6 runs: 0.0199-0.0240) against 0.0197 / 0.0582 without (3 runs, sd 0.0001), and offering
# a pair on groups only when its full cube's noise TVD passed 0.3 still gave 0.0218 / 0.0633 (3 runs); at eps 1 they
# gain 0.0018 (see GROUP_NOISE_TVD), at eps 3 (0.31: on) 0.0250 / 0.0655 against 0.0255 / 0.0675 (3 runs each). The
# limit sits near the geometric mean of 0.10 and 0.88.
GROUPED_SIGNAL = 0.3
WEIGHT_RESOLUTION = 1000  # non-integer workload weights are scaled so the largest is this, then rounded
EXPECTED_ABS = math.sqrt(2 / math.pi)  # E|Z| / sigma for a Gaussian Z

Progress = Callable[[str], None]


def aim_plan() -> dict[str, float]:
    """The budget plan: one adaptive stage holds the whole budget (the rounds split it as they go)."""
    return {STAGE: 1.0}


def workload(spec: Any, names: Sequence[str]) -> list[tuple[Clique, float]]:
    """The workload as (clique in column order, weight) from the spec's ``synthesizer.workload`` (None: every 2-way
    marginal, weight 1). ``three_way`` adds every 3-way marginal among the marked columns; ``cliques`` replaces the
    default with a weighted list. Raises :class:`SpecError`, before any data is read, for an unknown column."""
    names = list(names)
    order = {n: i for i, n in enumerate(names)}

    def canon(cols: Sequence[str], where: str) -> Clique:
        unknown = [c for c in cols if c not in order]
        if unknown:
            raise SpecError(f"{where} names {unknown}, which are not columns of the spec; use some of {names}")
        if len(set(cols)) != len(cols):
            raise SpecError(f"{where} names a column twice: {list(cols)}")
        return tuple(sorted(cols, key=order.__getitem__))

    if spec is not None and spec.cliques is not None:
        out: dict[Clique, float] = {}
        for i, item in enumerate(spec.cliques):
            c = canon(item.columns, f"synthesizer.workload.cliques[{i}]")
            out[c] = out.get(c, 0.0) + item.weight
        return list(out.items())
    pairs = [(c, 1.0) for c in combinations(names, 2)] if len(names) >= 2 else [((n,), 1.0) for n in names]
    marked = canon(spec.three_way, "synthesizer.workload.three_way") if spec is not None else ()
    if marked and len(marked) < 3:
        raise SpecError("synthesizer.workload.three_way needs at least 3 columns (every 3-way marginal among them is "
                        f"added); got {list(marked)}")
    return pairs + [(c, 1.0) for c in combinations(marked, 3)]


def downward_closure(work: Sequence[tuple[Clique, float]], names: Sequence[str]) -> list[Clique]:
    """Every non-empty subset of a workload clique, plus every 1-way marginal (AIM's first round), by size then
    column order: the cliques whose exact cubes the engine counts."""
    order = {n: i for i, n in enumerate(names)}
    out = {(n,) for n in names}
    for c, _ in work:
        for size in range(1, len(c) + 1):
            out.update(combinations(c, size))
    return sorted(out, key=lambda c: (len(c), [order[n] for n in c]))


def candidate_weights(work: Sequence[tuple[Clique, float]], candidates: Sequence[Clique]) -> dict[Clique, int]:
    """w_r = sum_s c_s |r n s| over the workload, in integers: integer weights are kept, others scaled so the
    largest is :data:`WEIGHT_RESOLUTION` and rounded (at least 1). Public: a function of the spec only."""
    raw = [c for _, c in work]
    if all(float(c).is_integer() for c in raw):
        ints = [int(c) for c in raw]
    else:
        top = max(raw)
        ints = [max(1, round(c * WEIGHT_RESOLUTION / top)) for c in raw]
    return {r: sum(w * len(set(r) & set(s)) for (s, _), w in zip(work, ints)) for r in candidates}


def model_cells(sizes: Mapping[str, int], cliques: Sequence[Clique]) -> int:
    """Total cells of the maximal cliques of the junction tree Private-PGM builds for ``cliques``: the model's size.
    Public sizes and measured cliques only."""
    from dpbeam.synth import jtree

    tree = jtree.build(sizes, cliques)
    nodes = set(tree.cliques)
    top = [c for c in nodes if not any(c < o for o in nodes)]
    return sum(math.prod(int(tree.sizes[j]) for j in c) for c in top)


def initial_plan(rho: float, d: int) -> tuple[float, float]:
    """(rho of one measurement, rho of one selection) before any annealing: alpha rho / T and (1 - alpha) rho / T."""
    t = ROUNDS_PER_COLUMN * max(d, 1)
    return ALPHA * rho / t, (1 - ALPHA) * rho / t


def first_measure_rho(rho: float, d: int) -> float:
    """The rho of a round's measurement before any annealing (for the k rule, :func:`dpbeam.discovery.choose_k`)."""
    rest = rho - d * one_way_rho(rho, d) if ONE_WAY_SHARE is not None else rho
    return initial_plan(rest, d)[0]


def one_way_rho(rho: float, d: int) -> float:
    """The rho of each 1-way measurement of the first round: AIM's alpha rho / T, or ONE_WAY_SHARE rho / d."""
    if ONE_WAY_SHARE is None:
        return initial_plan(rho, d)[0]
    return ONE_WAY_SHARE * rho / d


def median_pair_noise(one_way_cells: Mapping[Clique, int], total: float, sigma: float) -> float:
    """The median over the column pairs of sqrt(2/pi) sigma n_a n_b / total, n_a the public domain size of column a
    (before compression): a typical pair's expected L1 noise at ``sigma`` over the noisy row estimate ``total``. Public
    sizes, a noise scale and a DP output only, so a branch taken on it costs nothing. 0 for one column."""
    sizes = [int(one_way_cells[c]) for c in one_way_cells]
    noise = [EXPECTED_ABS * sigma * a * b / max(total, 1.0) for a, b in combinations(sizes, 2)]
    return float(np.median(noise)) if noise else 0.0


def low_signal(one_way_cells: Mapping[Clique, int], total: float, sigma: float, d: int) -> bool:
    """Whether the rounds cannot pay for their noise (see :data:`LOW_SIGNAL_NOISE`): :func:`median_pair_noise` at the
    rounds' planned first sigma and the noisy row estimate ``total`` of the first 1-way measurements exceeds it: a
    function of the spec and of DP outputs only, so the branch it picks costs nothing. False for one column."""
    return median_pair_noise(one_way_cells, total, sigma) > LOW_SIGNAL_NOISE


def score(exact: np.ndarray, model: np.ndarray, weight: int, sigma: float) -> int:
    """AIM's quality score of one candidate, an exact integer: w (||exact - round(model)||_1 - ceil(sqrt(2/pi) sigma
    n)), n the cube's cells. ``model`` and ``sigma`` are fixed before ``exact`` is read (post-processing of earlier
    outputs), so adding or removing one unit (<= k rows, <= k in L1 on ``exact``) moves it by at most w k."""
    penalty = math.ceil(EXPECTED_ABS * sigma * exact.size)
    return int(weight) * (l1_score(exact, model) - penalty)


Groups = tuple[np.ndarray, ...]


@dataclass(frozen=True)
class Candidate:
    """What a round may measure: a clique of the downward closure, whole (``groups`` None) or on groups of codes
    (``groups[i]`` maps the model codes of its i-th column to group codes; :mod:`dpbeam.privacy.resolution`)."""

    clique: Clique
    groups: Groups | None = None

    def cube(self, marginal: np.ndarray) -> np.ndarray:
        """The marginal (exact or the model's) as this candidate measures it: its cells summed within groups."""
        return marginal if self.groups is None else coarse_cube(marginal, self.groups)

    @property
    def group_counts(self) -> list[int] | None:
        return None if self.groups is None else [int(g.max()) + 1 for g in self.groups]


def offers(cliques: Sequence[Clique], domain: TableDomain, compression: Mapping[str, np.ndarray],
           one_way: Mapping[str, np.ndarray], sigma: float, total: float, grouped: bool = True) -> list[Candidate]:
    """The candidates of a round at noise scale ``sigma``: every clique whole, and every 2-way clique whose full cube
    would drown in the noise (expected noise TVD above a limit of :data:`GROUP_NOISE_TVD`) also on the groups
    :func:`dpbeam.privacy.resolution.pair_groups` chooses for that limit (each distinct grouping once). Reads public
    sizes and kinds, ``sigma`` and earlier DP outputs (the compression, the noisy 1-way counts ``one_way`` and the
    noisy row estimate ``total``) only, so the list costs nothing. ``grouped`` False: the cliques whole only."""
    out = [Candidate(r) for r in cliques]
    for r in cliques if grouped else ():
        if len(r) == 2:
            seen = set()
            for limit in GROUP_NOISE_TVD:
                groups = pair_groups(r, domain, compression, one_way, sigma, total, limit)
                if groups is not None and (key := tuple(int(g.max()) for g in groups)) not in seen:
                    seen.add(key)
                    out.append(Candidate(r, groups))
    return out


def measure(pick: Candidate, exact: np.ndarray, sigma: float, k: int, accountant: ZCDPAccountant) -> NoisyMarginal:
    """Measure a round's pick: its exact cube (model domain), summed within its groups if it has any, plus discrete
    Gaussian noise of scale ``sigma`` on every (grouped) cell, charged to the ``aim`` stage.

    Protects: the clique's cube. Sensitivity: one unit (<= k rows) moves the cube by at most k in L2 (all k rows in
    one cell is the worst case); summing cells within public groups cannot spread a row over two cells, so the grouped
    cube's L2 sensitivity is k as well. Cost: rho = k^2 / (2 sigma^2) either way. The groups are post-processing of
    earlier DP outputs (:func:`offers`). (Checked by ``test_grouped_rounds_are_charged_as_whole_ones...`` and
    ``test_grouped_measurement_adds_noise_once_per_group_cell``.)"""
    return measure_grouped(pick.clique, exact, pick.groups, sigma, k, accountant, STAGE)


def _fit(measurements: Sequence[NoisyMarginal], sizes: Mapping[str, int], total: float, warm_start: Any,
         max_iters: int) -> Any:
    """The one call into the estimator (post-processing on the trusted side; the reverse is what is forbidden): a
    Private-PGM model (:func:`dpbeam.synth.pgm.fit_problem`) fitted to every measurement by mirror descent until
    the fit's convergence rule stops it (noisy loss only), at most ``max_iters`` iterations, started from
    ``warm_start``'s potentials and step size (a clique measured for the first time starts at zero) or, cold
    (None), from the independent model of the noisy 1-way measurements. AIM reads only its
    ``.clique_marginal(clique)`` (counts, axes in the clique's order, numpy)."""
    from dpbeam.synth import pgm
    from dpbeam.synth.mirror import Measured, Problem

    problem = Problem(list(sizes), sizes, [Measured.of(m) for m in measurements])
    return pgm.fit_problem(problem, total, list(sizes), max_iters, warm_start=warm_start, converge=True,
                           independent_start=True, growth=FIT_GROWTH)


@dataclass(frozen=True)
class AIMResult:
    measurements: tuple[NoisyMarginal, ...]
    compression: dict[str, np.ndarray]
    rounds: tuple[dict[str, Any], ...]
    expansion: dict[str, np.ndarray] = field(default_factory=dict)  # see mst.expansion_weights


def _measure_one_way(cubes, names, k, sigma, accountant, budget: float, low_signal_check: bool
                     ) -> tuple[list[NoisyMarginal], dict[str, np.ndarray], list[dict[str, Any]], dict[str, np.ndarray]]:
    """The 1-way round (see the module doc): every column at ``sigma``; then, if ``low_signal_check`` and
    :func:`low_signal` says so, every column again at LOW_SIGNAL_SHARE of the budget, the two combined by inverse
    variance (post-processing); then MST's compression of rare codes (noisy count below 3 sigma of the combined
    estimate; :data:`COMPRESS_AT`). Returns the measurements, the compression, the round log's entries (one or
    two) and the expansion weights of compressed columns (:func:`dpbeam.privacy.mst.expansion_weights`).

    Protects: the 1-way cubes. Sensitivity: one unit (<= k rows) moves one column's cube by at most k in L2 (all k
    rows in one cell). Cost: each discrete Gaussian rho = k^2 / (2 sigma^2), charged as drawn: d of them at ``sigma``
    and, on the low-signal branch, d more at LOW_SIGNAL_SHARE rho_A / d each; the branch reads only the first draws'
    noisy total and public sizes. (Checked by ``test_low_signal_measures_the_one_way_marginals_twice...``.)"""
    d = len(names)
    noisy: dict[str, np.ndarray] = {}
    rhos: dict[str, float] = {}
    for n in names:
        noisy[n], rhos[n] = add_discrete_gaussian(cubes[(n,)], sigma, k)
        accountant.charge(STAGE, "discrete Gaussian", rhos[n], clique=[n], sigma=sigma, sensitivity_l2=k)
    log = [{"round": 1, "clique": [[n] for n in names], "sigma": sigma, "rho_select": 0.0,
            "rho_measure": sum(rhos.values()), "candidates": 0, "annealed": False, "last": False}]
    values = {n: noisy[n].astype(np.float64) for n in names}
    rest = budget - sum(rhos.values())
    first = [NoisyMarginal((n,), values[n], sigma, "discrete Gaussian", rhos[n]) for n in names]
    if low_signal_check and low_signal({(n,): cubes[(n,)].size for n in names}, estimated_total(first),
                                       gaussian_sigma(initial_plan(rest, d)[0], k), d):
        sigma2 = gaussian_sigma(LOW_SIGNAL_SHARE * budget / d, k)
        for n in names:
            again, rho = add_discrete_gaussian(cubes[(n,)], sigma2, k)
            accountant.charge(STAGE, "discrete Gaussian", rho, clique=[n], sigma=sigma2, sensitivity_l2=k)
            rhos[n] += rho
            values[n] = (values[n] / sigma**2 + again / sigma2**2) / (1 / sigma**2 + 1 / sigma2**2)
        log.append({"round": 2, "clique": [[n] for n in names], "sigma": sigma2, "rho_select": 0.0,
                    "rho_measure": sum(rhos.values()) - log[0]["rho_measure"], "candidates": 0, "annealed": False,
                    "last": False})
        sigma = (1 / sigma**2 + 1 / sigma2**2) ** -0.5
    compression: dict[str, np.ndarray] = {}
    expansion: dict[str, np.ndarray] = {}
    out = []
    for n in names:
        y = values[n]
        mapping = compress_rare(y, COMPRESS_AT * sigma)
        if mapping is None:
            out.append(NoisyMarginal((n,), y, sigma, "discrete Gaussian", rhos[n]))
            continue
        compression[n] = mapping
        expansion[n] = expansion_weights(y)
        out.append(compressed_one_way(n, y, mapping, sigma, rhos[n])[0])
    return out, compression, log, expansion


def run_aim(
    cubes: Mapping[Clique, np.ndarray],
    domain: TableDomain,
    k: int,
    accountant: ZCDPAccountant,
    work: Sequence[tuple[Clique, float]],
    max_cells: int = 1_000_000,
    max_minutes: float | None = None,
    round_iters: int = ROUND_ITERS,
    progress: Progress | None = None,
    tick: Callable[[float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> AIMResult:
    """Run AIM (module doc) on exact cubes of every clique of :func:`downward_closure` (trusted side); return the
    noisy measurements, the compression and the round log. Spends exactly the ``aim`` stage's allotment.

    ``tick(share)`` is called after each round with the share of the budget it spent (a progress bar); ``clock`` is
    the time source of ``max_minutes``."""
    from dpbeam.synth import jtree

    say = progress or (lambda _msg: None)
    tick = tick or (lambda _share: None)
    start = clock()
    names = domain.names
    d = len(names)
    budget = accountant.allotted(STAGE)
    rho_m = one_way_rho(budget, d)

    def left() -> float:
        return float(Fraction(budget) - sum((Fraction(c.rho) for c in accountant.charges if c.stage == STAGE),
                                            Fraction(0)))

    if d == 1 or len(work) == 0:  # nothing to select among: the 1-way marginals take the whole budget
        rho_m = budget / d
    sigma = gaussian_sigma(rho_m, k)
    say(f"AIM round 1: measuring {d} one-way marginals (sigma={sigma:.3g})")
    simple = d == 1 or len(work) == 0
    measurements, compression, rounds, expansion = _measure_one_way(cubes, names, k, sigma, accountant, budget,
                                                         ONE_WAY_SHARE is not None and not simple)
    if len(rounds) == 2:
        say(f"AIM round 2: low signal, measuring the {d} one-way marginals again (sigma={rounds[1]['sigma']:.3g})")
    tick(1 - left() / budget)
    if simple:
        rounds[-1]["last"] = True
        return AIMResult(tuple(measurements), compression, tuple(rounds), expansion)

    sizes = {n: int(compression[n].max()) + 1 if n in compression else domain[n].size for n in names}
    candidates = downward_closure(work, names)
    weights = candidate_weights(work, candidates)
    delta = k * max(weights.values())
    exact = {r: compress_cube(cubes[r], r, compression) for r in candidates}
    total = estimated_total(measurements)
    one_way = one_way_counts(measurements)  # the groups of a 2-way candidate are chosen from these (post-processing)
    rho_m, rho_s = initial_plan(left() if ONE_WAY_SHARE is not None else budget, d)
    grouped = median_pair_noise({(n,): domain[n].size for n in names}, total,
                                gaussian_sigma(rho_m, k)) >= GROUPED_SIGNAL  # public sizes and DP outputs: free
    model = _fit(measurements, sizes, total, None, round_iters)
    rho_round = rho_m + rho_s
    last = False
    while not last:
        remaining = left()
        late = max_minutes is not None and clock() - start >= 60.0 * max_minutes
        if late or remaining < 2 * rho_round:
            last = True
            if late:
                say("AIM: max_minutes reached; the rest of the budget goes to one last round")
            rho_s = (1 - ALPHA) * remaining
            rho_m = remaining - rho_s
        else:
            rho_s, rho_m = (1 - ALPHA) * rho_round, ALPHA * rho_round
        sigma = gaussian_sigma(rho_m, k)
        measured = [tuple(m.clique) for m in measurements]
        limit = max_cells * (1 - remaining / budget)
        now = model_cells(sizes, measured)
        covered = [{names[j] for j in c} for c in jtree.build(sizes, measured).cliques]
        fits = [r for r in candidates
                if any(set(r) <= c for c in covered) or model_cells(sizes, measured + [r]) <= max(limit, now)]
        before = {r: model.clique_marginal(r) for r in fits}
        offered = offers(fits, domain, compression, one_way, sigma, total, grouped)
        scores = [score(c.cube(exact[c.clique]), c.cube(before[c.clique]), weights[c.clique], sigma) for c in offered]
        idx, rho = exponential_mechanism(scores, sensitivity=delta, rho=rho_s)
        accountant.charge(STAGE, "exponential mechanism (Gumbel noisy max)", rho, candidates=len(offered),
                          sensitivity=delta)
        pick = offered[idx]
        r = pick.clique
        on_groups = {} if pick.groups is None else {"groups": pick.group_counts}
        measurements.append(measure(pick, exact[r], sigma, k, accountant))
        model = _fit(measurements, sizes, total, model, round_iters)
        moved = float(np.abs(pick.cube(model.clique_marginal(r)) - pick.cube(before[r])).sum())
        annealed = not last and moved <= EXPECTED_ABS * sigma * measurements[-1].values.size
        if annealed:
            rho_round *= ANNEAL
        rounds.append({"round": len(rounds) + 1, "clique": [list(r)], "sigma": sigma, "rho_select": rho_s,
                       "rho_measure": rho_m, "candidates": len(offered), "annealed": annealed, "last": last,
                       **on_groups})
        tick(rho_s / budget + rho_m / budget)
        say(f"AIM round {len(rounds)}: measured {list(r)}{' on groups' if on_groups else ''} (sigma={sigma:.3g})")
    return AIMResult(tuple(measurements), compression, tuple(rounds), expansion)
