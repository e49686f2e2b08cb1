"""An empirical audit of dpbeam's measurement kernel: a lower bound on epsilon from many runs on neighbouring tables.

What is audited. The trusted pass bounds every privacy unit to k rows (:func:`dpbeam.bounding.bound_rows`), counts a
marginal (:func:`dpbeam.marginals.count_cliques`) and adds discrete Gaussian noise with OpenDP
(:func:`dpbeam.privacy.noise.add_discrete_gaussian`) at the scale dpbeam uses for a release of L2 sensitivity k:
sigma = k / sqrt(2 rho), with rho the zCDP budget of the claimed (epsilon, delta). The audit runs these same kernels,
once per table, on a pair of neighbouring tables: D (public, generated units) and D' = D plus one worst-case unit
whose ``unit_rows`` rows all fall in one cell. The noise is the only randomness left after counting (the kept count
of a unit whose rows are all equal does not depend on the bounding key; checked on several keys), so the many runs are
drawn in one vectorized call per table: OpenDP's ``make_gaussian`` on a vector draws each element independently, so a
long vector filled with the target cell's exact count is many independent runs of the release of that cell. The other
cells of the cube have the same distribution under D and D', so the likelihood ratio, and the best test, depend on
the target cell alone.

The bound. A test "say D' when the noisy count >= t" has false positive rate FPR = P_D[y >= t] and false negative
rate FNR = P_D'[y < t]. (epsilon, delta)-DP implies 1 - FNR <= e^eps FPR + delta and 1 - FPR <= e^eps FNR + delta,
so eps >= log((1 - delta - FNR) / FPR) and eps >= log((1 - delta - FPR) / FNR). The threshold and direction are chosen
on the first half of the runs; on the second half, Clopper-Pearson upper bounds on FPR and FNR (each at level
(1 - confidence) / 2, so both hold together with probability >= confidence) give a lower bound on epsilon that holds
with that confidence. A correct mechanism keeps it below the claimed epsilon; the broken variant (bounding switched
off, so the unit moves its cell by ``unit_rows`` > k while sigma is calibrated for k) must push it above.

The audit reads no real data and writes nothing: its result is a dict for the report.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import multiprocessing
import numpy as np
import pyarrow as pa
from scipy.stats import beta

from dpbeam.bounding import BoundingKey, bound_rows, unit_hashes
from dpbeam.domain import TableDomain
from dpbeam.marginals import count_cliques
from dpbeam.privacy.accountant import rho_for
from dpbeam.privacy.noise import add_discrete_gaussian, gaussian_sigma, noise_is_off
from dpbeam.progress import Reporter

# The audit's own public neighbouring pair: a two-column cube and a few hundred generated units.
AUDIT_DOMAIN = TableDomain.from_json([
    {"name": "a", "kind": "integer", "arrow_type": "int64", "nullable": False, "edges": list(range(9))},
    {"name": "b", "kind": "integer", "arrow_type": "int64", "nullable": False, "edges": list(range(7))},
])
CLIQUE = ("a", "b")
TARGET_CELL = (0, 0)
CHUNK = 50_000  # runs per call of the noise kernel (one progress tick)
KEY_CHECKS = 4  # bounding keys on which the exact cube is checked to be the same

_bounding_off = False
_broken_audit = False  # True only while run_audit(broken=True) runs


@contextlib.contextmanager
def bounding_disabled_for_tests() -> Iterator[None]:
    """Test-only: the audit's measurement keeps every row of a unit (contribution bounding switched off).

    It refuses to work outside a pytest test or the audit's own broken-variant mode. Only
    :func:`bounded_cube` in this module reads the switch; no job, spec or release path does, so it cannot reach a
    release. Anything measured under it is not private: that is its purpose.
    """
    global _bounding_off
    if "PYTEST_CURRENT_TEST" not in os.environ and not _broken_audit:
        raise RuntimeError("contribution bounding can only be switched off inside a pytest test or the broken audit")
    _bounding_off = True
    try:
        yield
    finally:
        _bounding_off = False


def neighbouring_tables(
    unit_rows: int, k: int, seed: int = 0
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(codes, units) of D (300 generated units of 1 to k rows, so bounding keeps them whole whatever the key) and
    D' (D plus unit -1 with ``unit_rows`` rows, all in :data:`TARGET_CELL`). Public, generated data."""
    rng = np.random.default_rng(seed)
    rows_per_unit = rng.integers(1, k + 1, size=300)
    units = np.repeat(np.arange(300), rows_per_unit)
    codes = np.stack([rng.integers(0, s, size=len(units)) for s in AUDIT_DOMAIN.sizes], axis=1).astype(np.uint8)
    extra_codes = np.tile(np.asarray(TARGET_CELL, dtype=np.uint8), (unit_rows, 1))
    d1 = (np.concatenate([codes, extra_codes]), np.concatenate([units, np.full(unit_rows, -1)]))
    return (codes, units), d1


def bounded_cube(codes: np.ndarray, units: np.ndarray, k: int, key: BoundingKey) -> np.ndarray:
    """The exact cube of :data:`CLIQUE` after dpbeam's contribution bounding (k rows per unit), by dpbeam's kernels.
    With :func:`bounding_disabled_for_tests` active every row is kept."""
    if _bounding_off:
        kept = np.arange(len(codes))
    else:
        h1, h2 = unit_hashes(pa.array(units, type=pa.int64()), key)
        kept = bound_rows(h1, h2, codes, k, key)
    return count_cliques(codes[kept], AUDIT_DOMAIN, [CLIQUE])[CLIQUE]


def _draw(value: int, n: int, sigma: float, k: int) -> np.ndarray:
    """n independent runs of the noisy release of one cell holding ``value``: one vectorized OpenDP call."""
    noisy, _rho = add_discrete_gaussian(np.full(n, value, dtype=np.int64), sigma, k)
    return noisy


def draw_runs(value: int, n: int, sigma: float, k: int, workers: int = 1, advance: Any = None) -> np.ndarray:
    """``n`` runs in chunks of :data:`CHUNK`, spread over ``workers`` processes (each draws from OS entropy)."""
    sizes = [min(CHUNK, n - i) for i in range(0, n, CHUNK)]
    if workers <= 1 or len(sizes) == 1:
        out = []
        for s in sizes:
            out.append(_draw(value, s, sigma, k))
            if advance:
                advance(1)
        return np.concatenate(out)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_draw, value, s, sigma, k) for s in sizes]
        out = []
        for f in futures:
            out.append(f.result())
            if advance:
                advance(1)
    return np.concatenate(out)


def clopper_pearson_upper(successes: np.ndarray | int, n: int, alpha: float) -> np.ndarray:
    """One-sided upper confidence bound at level 1 - alpha on a binomial proportion (exact, Clopper-Pearson)."""
    x = np.asarray(successes, dtype=np.float64)
    upper = beta.ppf(1 - alpha, x + 1, np.maximum(n - x, 1e-300))
    return np.where(x >= n, 1.0, upper)


def _rates(y0: np.ndarray, y1: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of false positives (y0 >= t) and false negatives (y1 < t) for each threshold t."""
    s0, s1 = np.sort(y0), np.sort(y1)
    fp = len(s0) - np.searchsorted(s0, thresholds, side="left")
    fn = np.searchsorted(s1, thresholds, side="left")
    return fp, fn


def _eps_bounds(fpr: np.ndarray, fnr: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """The two DP inequalities' lower bounds on epsilon ("say D' above t" and its complement)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(np.maximum(1 - delta - fnr, 0) / fpr)
        b = np.log(np.maximum(1 - delta - fpr, 0) / fnr)
    return np.nan_to_num(a, nan=-np.inf, posinf=np.inf), np.nan_to_num(b, nan=-np.inf, posinf=np.inf)


def epsilon_lower_bound(y0: np.ndarray, y1: np.ndarray, delta: float, confidence: float) -> dict[str, Any]:
    """Choose the threshold test on the first half of the runs, bound its error rates on the second half.

    Returns the lower bound, the threshold and direction, and the rates behind it."""
    h0, h1 = len(y0) // 2, len(y1) // 2
    alpha = (1 - confidence) / 2
    thresholds = np.unique(np.concatenate([y0[:h0], y1[:h1]]))
    thresholds = np.append(thresholds, thresholds[-1] + 1)
    fp, fn = _rates(y0[:h0], y1[:h1], thresholds)
    a, b = _eps_bounds(clopper_pearson_upper(fp, h0, alpha), clopper_pearson_upper(fn, h1, alpha), delta)
    i_a, i_b = int(np.argmax(a)), int(np.argmax(b))
    direction, i = ("above", i_a) if a[i_a] >= b[i_b] else ("below", i_b)
    t = thresholds[i : i + 1]
    n0, n1 = len(y0) - h0, len(y1) - h1
    fp2, fn2 = _rates(y0[h0:], y1[h1:], t)
    fpr_u, fnr_u = clopper_pearson_upper(fp2, n0, alpha), clopper_pearson_upper(fn2, n1, alpha)
    a2, b2 = _eps_bounds(fpr_u, fnr_u, delta)
    lb = float((a2 if direction == "above" else b2)[0])
    return {
        "epsilon_lower_bound": max(lb, 0.0),
        "threshold": int(t[0]),
        "direction": direction,
        "false_positive_rate": float(fp2[0] / n0),
        "false_negative_rate": float(fn2[0] / n1),
        "false_positive_rate_upper": float(fpr_u[0]),
        "false_negative_rate_upper": float(fnr_u[0]),
    }


@dataclass(frozen=True)
class AuditResult:
    claimed_epsilon: float
    delta: float
    rho: float
    sigma: float
    k: int
    unit_rows: int
    runs_per_table: int
    confidence: float
    epsilon_lower_bound: float
    broken: bool
    threshold: int
    direction: str
    false_positive_rate: float
    false_negative_rate: float
    false_positive_rate_upper: float
    false_negative_rate_upper: float
    cell_shift: int
    seconds: float

    @property
    def passed(self) -> bool:
        """A correct mechanism's bound stays below the claim; the broken variant's must exceed it."""
        below = self.epsilon_lower_bound < self.claimed_epsilon
        return not below if self.broken else below

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def run_audit(
    epsilon: float,
    delta: float,
    k: int = 1,
    runs: int = 200_000,
    unit_rows: int | None = None,
    confidence: float = 0.95,
    broken: bool = False,
    workers: int | None = None,
    reporter: Reporter | None = None,
) -> AuditResult:
    """Audit one release of dpbeam's measurement kernel at the claimed (epsilon, delta) with k rows per unit.

    ``runs`` noisy releases are drawn for each of the two tables. ``unit_rows`` (default 10 k) is the size of the
    worst-case unit; with bounding on it contributes k rows, with ``broken`` it contributes all of them.
    ``workers`` processes draw the noise (default: every CPU when there are more than two chunks)."""
    global _broken_audit
    if runs < 2 * 1000:
        raise ValueError("the audit needs at least 2,000 runs per table")
    if noise_is_off():
        raise RuntimeError("the audit needs the noise: it cannot run under noise_disabled_for_tests")
    reporter = reporter or Reporter()
    unit_rows = unit_rows if unit_rows is not None else 10 * k
    rho = rho_for(epsilon, delta)
    sigma = gaussian_sigma(rho, k)
    t0 = time.perf_counter()
    d0, d1 = neighbouring_tables(unit_rows, k)
    with contextlib.ExitStack() as stack:
        if broken:
            _broken_audit = True
            stack.callback(lambda: globals().update(_broken_audit=False))
            stack.enter_context(bounding_disabled_for_tests())
        cubes = []
        for _ in range(KEY_CHECKS):
            key = BoundingKey.fresh()
            cubes.append((bounded_cube(*d0, k, key), bounded_cube(*d1, k, key)))
    c0, c1 = cubes[0]
    if any(not (np.array_equal(a, c0) and np.array_equal(b, c1)) for a, b in cubes):
        raise AssertionError("the bounded cube of the audit's tables depends on the bounding key")
    diff = c1 - c0
    if np.count_nonzero(diff) != 1 or diff[TARGET_CELL] <= 0:
        raise AssertionError("the neighbouring tables must differ in the target cell only")
    chunks = -(-runs // CHUNK)
    workers = workers if workers is not None else (os.cpu_count() or 1) if chunks > 2 else 1
    with reporter.stage(f"audit{' (broken variant)' if broken else ''}: {2 * runs:,} noisy releases",
                        total=2 * chunks) as advance:
        advance.set_total(2 * chunks, "chunks")
        y0 = draw_runs(int(c0[TARGET_CELL]), runs, sigma, k, workers, advance)
        y1 = draw_runs(int(c1[TARGET_CELL]), runs, sigma, k, workers, advance)
    best = epsilon_lower_bound(y0, y1, delta, confidence)
    return AuditResult(
        claimed_epsilon=epsilon, delta=delta, rho=rho, sigma=sigma, k=k, unit_rows=unit_rows, runs_per_table=runs,
        confidence=confidence, broken=broken, cell_shift=int(diff[TARGET_CELL]),
        seconds=round(time.perf_counter() - t0, 2), **best,
    )


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The exact epsilon of a Gaussian shift mu (in units of sigma) at delta (Balle & Wang 2018), by bisection; for
    comparing the empirical bound with what the test could at best show."""
    from scipy.stats import norm

    def d(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)

    lo, hi = 0.0, 1.0
    while d(hi) > delta:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if d(mid) > delta else (lo, mid)
    return hi
