"""The privacy kernels state their guarantees; these tests check each claim.

OpenDP's samplers draw from OS entropy and cannot be seeded, so the statistical tests here use thresholds with a
false-failure probability below 1e-6 each; the derivation sits beside every threshold.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpbeam.privacy.accountant import ZCDPAccountant, epsilon_for, rho_for
from dpbeam.privacy.noise import add_discrete_gaussian, gaussian_rho, gaussian_sigma
from dpbeam.privacy.selection import em_scale, exponential_mechanism
from dpbeam.errors import BudgetError


def cks_delta(rho: float, eps: float) -> float:
    """Canonne, Kamath & Steinke 2020, Prop. 12: rho-zCDP implies (eps, delta)-DP with
    delta = min over alpha > 1 of exp((alpha-1)(alpha rho - eps)) / (alpha-1) * (1 - 1/alpha)^alpha.
    Written here independently of OpenDP and minimized on a fine log grid."""
    alphas = np.exp(np.linspace(np.log(1.0001), np.log(1e5), 200_000))
    logd = (alphas - 1) * (alphas * rho - eps) - np.log(alphas - 1) + alphas * np.log1p(-1 / alphas)
    return float(np.exp(logd.min()))


@pytest.mark.parametrize("eps,delta", [(1.0, 1e-9), (0.1, 1e-9), (10.0, 1e-9), (1.0, 1e-5)])
def test_rho_for_matches_the_cks_conversion(eps, delta):
    rho = rho_for(eps, delta)
    assert cks_delta(rho, eps) == pytest.approx(delta, rel=1e-3)
    # and it is never looser than the classical bound eps = rho + 2 sqrt(rho log(1/delta)) (Bun & Steinke 2016)
    assert rho >= (math.sqrt(math.log(1 / delta) + eps) - math.sqrt(math.log(1 / delta))) ** 2 * (1 - 1e-9)
    assert epsilon_for(rho, delta) == pytest.approx(eps, rel=1e-9)
    assert epsilon_for(rho, delta) <= eps


def test_accountant_refuses_overspending():
    acc = ZCDPAccountant(1.0, 1e-9, {"a": 0.25, "b": 0.75})
    acc.charge("a", "test", acc.allotted("a") / 2)
    acc.charge("a", "test", acc.allotted("a") / 2)
    with pytest.raises(BudgetError, match="'a'"):
        acc.charge("a", "test", acc.allotted("a") * 1e-6)
    assert acc.spent() == pytest.approx(acc.rho / 4)
    rec = acc.record()
    # stage b spent nothing, yet the guarantee reported is the budget's
    assert rec["stages"]["b"]["rho_charged"] == 0 and rec["epsilon"] == 1.0


@pytest.mark.parametrize("k,sigma", [(1, 3.0), (3, 7.5), (10, 40.0)])
def test_gaussian_charges_k_squared_over_two_sigma_squared(k, sigma):
    assert gaussian_rho(sigma, k) == pytest.approx(k**2 / (2 * sigma**2), rel=1e-12)
    rho = 0.01
    assert gaussian_rho(gaussian_sigma(rho, k), k) <= rho


def test_discrete_gaussian_matches_its_distribution():
    """KS test of many draws against the exact discrete Gaussian CDF with the stated scale.

    n = 20000 draws; the two-sided KS bound P(D > t) <= 2 exp(-2 n t^2) (Dvoretzky-Kiefer-Wolfowitz, Massart) gives
    t = sqrt(ln(2 / 1e-6) / (2 n)) = 0.0190 for a false-failure probability of 1e-6 (conservative for a discrete
    law). The sample standard deviation has relative standard error 1/sqrt(2n) = 0.005; 5.5 of those is 2.75%.
    """
    sigma, n = 5.0, 20_000
    noisy, rho = add_discrete_gaussian(np.full(n, 100, dtype=np.int64), sigma, 1)
    z = noisy - 100
    support = np.arange(-60, 61)
    pmf = np.exp(-(support**2) / (2 * sigma**2))
    cdf = np.cumsum(pmf / pmf.sum())
    emp = np.searchsorted(np.sort(z), support, side="right") / n
    assert np.abs(emp - cdf).max() < math.sqrt(math.log(2 / 1e-6) / (2 * n))
    assert abs(z.std() / sigma - 1) < 5.5 / math.sqrt(2 * n)
    assert rho == pytest.approx(1 / (2 * sigma**2))
    assert noisy.dtype == np.int64


def test_exponential_mechanism_frequencies_and_cost():
    """Scores [0, 1, 2], sensitivity 1, scale 1: P(i) = e^i / (1 + e + e^2) = (0.090, 0.245, 0.665).

    n = 3000 draws; each frequency has standard error at most sqrt(0.25/3000) = 0.0091; a 5.5-sigma band (0.050)
    fails with probability below 1e-7 per index."""
    rho = 0.5  # scale = 1 / sqrt(2 * 0.5) = 1
    assert em_scale(rho, 1.0) == pytest.approx(1.0)
    draws = [exponential_mechanism([0.0, 1.0, 2.0], 1.0, rho)[0] for _ in range(3000)]
    freq = np.bincount(draws, minlength=3) / 3000
    expect = np.exp([0, 1, 2]) / np.exp([0, 1, 2]).sum()
    assert np.all(np.abs(freq - expect) < 5.5 * math.sqrt(0.25 / 3000))
    _, spent = exponential_mechanism([0.0, 1.0], sensitivity=3.0, rho=0.02)
    assert spent == pytest.approx(0.02, rel=1e-9) and spent <= 0.02


def test_exponential_mechanism_rejects_bad_scores():
    with pytest.raises(ValueError):
        exponential_mechanism([], 1.0, 0.1)
    with pytest.raises(ValueError):
        exponential_mechanism([1.0, float("nan")], 1.0, 0.1)
