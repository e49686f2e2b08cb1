"""Private selection: the exponential mechanism, run by OpenDP's noisy-max with Gumbel noise, on integer scores.

Mechanism. Given candidate scores q_1..q_m whose sensitivity is Delta (adding or removing one unit moves every score
by at most Delta, in either direction), return argmax_i (q_i + G_i) with G_i iid Gumbel of scale s. This samples i
with probability proportional to exp(q_i / s): the exponential mechanism with epsilon = 2 Delta / s, which is
epsilon^2/8-zCDP (Cesar & Rogers 2021, bounded range), i.e. rho = Delta^2 / (2 s^2). The rho we record is what
OpenDP's privacy map returns for ``zero_concentrated_divergence`` and d_in = Delta.

Exact scores. The sensitivity argument is about real numbers; a score summed in floating point can move by more
than Delta when one unit changes (float64 sums of 10^6 cells of counts near 10^9 round by more than a count). So the
scores are integers, computed in integer arithmetic (:func:`l1_score`), and OpenDP's noisy max runs on int64 with
d_in = Delta an integer: the sensitivity holds exactly, with no rounding anywhere between the data and the sampler.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from dpbeam.privacy._opendp import dp

# Scores are clipped into [-SCORE_CAP, SCORE_CAP] before selection. Clipping is 1-Lipschitz, so it keeps the
# sensitivity; the cap leaves room in int64 for OpenDP's arithmetic. No real score comes near it.
SCORE_CAP = 1 << 62
# Model cells are clipped into [0, MODEL_CAP] before rounding: beyond 2^53 a float64 holds no integer exactly.
MODEL_CAP = 1 << 53


def _measurement(scale: float):
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.linf_distance(T="i64")
    return dp.m.make_noisy_max(*space, dp.zero_concentrated_divergence(), scale=scale)


def em_scale(rho: float, sensitivity: float) -> float:
    """The Gumbel scale that makes one selection cost rho for scores of sensitivity Delta: Delta / sqrt(2 rho),
    nudged up by one part in 10^12 so that OpenDP's rounded-up map never exceeds rho."""
    if rho <= 0:
        raise ValueError("rho must be positive")
    return sensitivity / math.sqrt(2.0 * rho) * (1 + 1e-12)


def _integers(values: Sequence[int] | Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == object:
        arr = np.asarray([int(v) for v in arr.ravel()], dtype=object).reshape(arr.shape)
        return np.clip(arr, -SCORE_CAP, SCORE_CAP).astype(np.int64)
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        return np.clip(arr.astype(np.int64), -SCORE_CAP, SCORE_CAP)
    if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
        raise ValueError(f"{what} must be integers (exact; see dpbeam.privacy.selection.l1_score); got {arr.dtype}")
    return np.clip(arr, -SCORE_CAP, SCORE_CAP).astype(np.int64)


def l1_score(exact: np.ndarray, model: np.ndarray) -> int:
    """The L1 distance ``||exact - round(model)||_1``, computed exactly in integers.

    ``exact`` is a cube of integer counts (the data side); ``model`` a float estimate of the same shape, fixed before
    ``exact`` is looked at (post-processing of earlier DP outputs). The model is made an integer vector first: cells
    that are not finite become 0, the rest are clipped into [0, 2^53] and rounded to the nearest integer; all a
    function of the model only.

    Sensitivity. Adding or removing one unit (at most k rows) moves ``exact`` by at most k in L1. With the integer
    model m fixed, | ||x - m||_1 - ||x' - m||_1 | <= ||x - x'||_1 <= k (triangle inequality). The sum is taken in
    int64 when a bound on it stays below 2^61 and in Python integers otherwise, so no step rounds: the score moves by
    at most k, exactly.
    """
    exact = np.asarray(exact)
    if not np.issubdtype(exact.dtype, np.integer):
        raise TypeError("l1_score takes a cube of integer counts")
    m = np.asarray(model, dtype=np.float64)
    if m.shape != exact.shape:
        raise ValueError(f"model shape {m.shape} does not match the cube's {exact.shape}")
    m = np.rint(np.clip(np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0), 0.0, float(MODEL_CAP))).astype(np.int64)
    x = exact.astype(np.int64, copy=False)
    # |x - m| <= max(|x|, m) fits int64; their sum does when this float bound (relative error < 1e-9) is below 2^61
    bound = float(np.abs(x).sum(dtype=np.float64)) + float(m.sum(dtype=np.float64))
    if bound < 2.0**61:
        return int(np.abs(x - m).sum(dtype=np.int64))
    return sum(abs(int(a) - int(b)) for a, b in zip(x.ravel().tolist(), m.ravel().tolist()))


def exponential_mechanism(
    scores: Sequence[int] | Sequence[float] | np.ndarray, sensitivity: int | float, rho: float
) -> tuple[int, float]:
    """Select an index, favouring high scores; returns (index, rho spent).

    Protects: the data the scores are computed from. Sensitivity: ``sensitivity`` (an integer Delta; every score moves
    by at most Delta when one unit is added or removed). Cost: rho = Delta^2 / (2 s^2) with s = :func:`em_scale`, as
    OpenDP's map computes it. Scores must be integers (integer-valued floats are taken exactly); they are clipped into
    [-2^62, 2^62] (1-Lipschitz, so the sensitivity holds)."""
    arr = np.asarray(scores)
    if arr.ndim != 1 or len(arr) == 0:
        raise ValueError("scores must be a non-empty vector of integers")
    ints = _integers(arr, "scores")
    delta = float(sensitivity)
    if not math.isfinite(delta) or delta != round(delta) or delta < 1:
        raise ValueError(f"the sensitivity of integer scores must be a positive integer; got {sensitivity}")
    meas = _measurement(em_scale(rho, delta))
    spent = float(meas.map(int(delta)))
    return int(meas([int(v) for v in ints.tolist()])), spent
