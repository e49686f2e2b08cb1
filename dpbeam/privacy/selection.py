"""Private selection: the exponential mechanism, run by OpenDP's noisy-max with Gumbel noise.

Mechanism. Given candidate scores q_1..q_m whose sensitivity is Delta (adding or removing one unit moves every score
by at most Delta, in either direction), return argmax_i (q_i + G_i) with G_i iid Gumbel of scale s. This samples i
with probability proportional to exp(q_i / s): the exponential mechanism with epsilon = 2 Delta / s, which is
epsilon^2/8-zCDP (Cesar & Rogers 2021, bounded range), i.e. rho = Delta^2 / (2 s^2). The rho we record is what
OpenDP's privacy map returns for ``zero_concentrated_divergence`` and d_in = Delta.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from dpbeam.privacy._opendp import dp


def _measurement(scale: float):
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.linf_distance(T=float)
    return dp.m.make_noisy_max(*space, dp.zero_concentrated_divergence(), scale=scale)


def em_scale(rho: float, sensitivity: float) -> float:
    """The Gumbel scale that makes one selection cost rho for scores of sensitivity Delta: Delta / sqrt(2 rho)."""
    if rho <= 0:
        raise ValueError("rho must be positive")
    return sensitivity / math.sqrt(2.0 * rho) * (1 + 1e-12)


def exponential_mechanism(scores: Sequence[float] | np.ndarray, sensitivity: float, rho: float) -> tuple[int, float]:
    """Select an index, favouring high scores; returns (index, rho spent)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0 or not np.all(np.isfinite(scores)):
        raise ValueError("scores must be a non-empty vector of finite numbers")
    meas = _measurement(em_scale(rho, sensitivity))
    spent = float(meas.map(float(sensitivity)))
    return int(meas(scores.tolist())), spent
