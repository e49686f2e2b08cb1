"""Gaussian noise on integer count cubes, drawn by OpenDP's discrete Gaussian sampler.

Mechanism. For a count cube x (integers) with L2 sensitivity Delta, release x + Z with Z_i iid discrete Gaussian of
scale sigma (Canonne, Kamath & Steinke 2020). It satisfies rho-zCDP with rho = Delta^2 / (2 sigma^2); the rho we
record is what OpenDP's own privacy map returns for d_in = Delta, not our formula.

Sensitivity. Under "at most k rows per unit" a count cube changes by at most k in L2 (see :mod:`dpbeam.marginals`),
so Delta = k. Row-level DP is k = 1.

Why OpenDP. numpy's floating-point Gaussian is attackable (Mironov 2012); OpenDP samples the discrete Gaussian
exactly from OS entropy. The samples are not seeded and cannot be.

The test-only switch. :func:`noise_disabled_for_tests` releases exact counts so that engines can be compared cell by
cell. Once it has been entered, this process can never again write a privacy record, a measurements artifact or a
release statement (:func:`require_noise_never_disabled`): the flag is sticky, it has no reset, and nothing measured
anywhere in the process is trusted after it. Tests that use the switch run it in a child process.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Iterator

import numpy as np

from dpbeam.privacy._opendp import dp

_noise_off = False  # noise is off right now (inside noise_disabled_for_tests)
_noise_was_off = False  # sticky: noise was off at some point in this process; never reset


class NoiseWasDisabledError(RuntimeError):
    """A release (privacy record, measurements artifact, statement) was asked for in a process where the test-only
    noise switch was used."""


def gaussian_sigma(rho: float, sensitivity_l2: float) -> float:
    """The scale that makes one Gaussian release of L2 sensitivity Delta cost rho: Delta / sqrt(2 rho).

    The scale is nudged up by one part in 10^12, so OpenDP's map Delta^2 / (2 sigma^2) is rho (1 - 2e-12) before
    OpenDP rounds it up by a few ulps (relative 1e-15): the charge never exceeds rho, with room for the few ulps by
    which a stage's allotment divided by its number of releases can round up. The accountant checks charges
    exactly, with no tolerance; a test checks the map against rho over many (rho, Delta).
    """
    if rho <= 0:
        raise ValueError("rho must be positive")
    return sensitivity_l2 / math.sqrt(2.0 * rho) * (1 + 1e-12)


def _measurement(sigma: float):
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T=float)
    return dp.m.make_gaussian(*space, scale=sigma)


def gaussian_rho(sigma: float, sensitivity_l2: float) -> float:
    """The rho OpenDP's privacy map charges for one discrete Gaussian release of scale sigma and sensitivity Delta."""
    return float(_measurement(sigma).map(float(sensitivity_l2)))


def add_discrete_gaussian(counts: np.ndarray, sigma: float, sensitivity_l2: float) -> tuple[np.ndarray, float]:
    """Release ``counts`` (any shape, integer) plus discrete Gaussian noise of scale ``sigma``.

    Returns the noisy cube (int64, same shape) and the rho it costs for L2 sensitivity ``sensitivity_l2``.
    """
    counts = np.asarray(counts)
    if not np.issubdtype(counts.dtype, np.integer):
        raise TypeError("the discrete Gaussian takes integer counts")
    meas = _measurement(sigma)
    rho = float(meas.map(float(sensitivity_l2)))
    flat = np.ascontiguousarray(counts, dtype=np.int64).ravel()
    if _noise_off:
        return flat.reshape(counts.shape).copy(), rho
    noisy = np.asarray(meas(flat), dtype=np.int64)
    return noisy.reshape(counts.shape), rho


@contextlib.contextmanager
def noise_disabled_for_tests() -> Iterator[None]:
    """Test-only: release exact counts so engines can be compared cell by cell.

    No spec field reaches this; it refuses to work outside pytest. Anything measured under it is not private, and the
    process that used it can write no privacy record, artifact or release statement afterwards (the flag is sticky):
    run it in a child process.
    """
    global _noise_off, _noise_was_off
    if "PYTEST_CURRENT_TEST" not in os.environ:
        raise RuntimeError("noise can only be switched off inside a pytest test")
    _noise_was_off = True
    _noise_off = True
    try:
        yield
    finally:
        _noise_off = False  # noise is back on; _noise_was_off stays True for the life of the process


def noise_is_off() -> bool:
    """Whether noise is off right now."""
    return _noise_off


def noise_was_disabled() -> bool:
    """Whether noise was off at any point in this process (sticky)."""
    return _noise_was_off


def require_noise_never_disabled(what: str) -> None:
    """Refuse to make ``what`` (a privacy record, an artifact, a release statement) in a process where noise was off
    at any point: nothing measured in it can be trusted to be private."""
    if _noise_was_off:
        raise NoiseWasDisabledError(
            f"refusing to write {what}: noise was switched off by the test-only hook noise_disabled_for_tests earlier "
            f"in this process, so nothing measured in it is private; run the job in a fresh process without the hook"
        )
