"""The mechanism audit: dpbeam's kernels on neighbouring tables, a Clopper-Pearson lower bound on epsilon."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpbeam.bounding import BoundingKey
from dpbeam.evaluate import audit as A
from fresh_process import run_fresh

# OpenDP's noise comes from OS entropy and cannot be seeded; each threshold below is derived from the noise scale.
# At epsilon = 1, delta = 1e-9, k = 1, dpbeam's sigma is 5.78, so a unit of k rows shifts its cell by 0.17 sigma: the
# exact epsilon of that Gaussian shift at delta = 1e-9 is 0.95, an upper limit on any test's epsilon; the lower bound
# exceeds it with probability at most 5% (the confidence) and 1 with far less. 10,000 evaluation runs per table
# resolve rates down to about 3e-4, where the shift is worth about 0.5.
# The broken variant moves the cell by 10 rows = 1.73 sigma: at FPR ~ 1e-3 the population bound is
# log(Q(3.1 - 1.73) / Q(3.1)) ~ 4.5, and Clopper-Pearson on 10,000 runs costs less than 1, so it must exceed 1.
RUNS = 20_000


def test_correct_mechanism_stays_below_the_claim():
    r = A.run_audit(1.0, 1e-9, k=1, runs=RUNS)
    assert r.cell_shift == 1 and r.unit_rows == 10 and not r.broken
    assert math.isclose(r.sigma, 1 / math.sqrt(2 * r.rho), rel_tol=1e-9)
    assert r.epsilon_lower_bound < 1.0 and r.passed
    assert r.runs_per_table == RUNS and r.confidence == 0.95


def test_broken_variant_is_caught():
    r = A.run_audit(1.0, 1e-9, k=1, runs=RUNS, broken=True)
    assert r.cell_shift == 10
    assert r.epsilon_lower_bound > 1.0 and r.passed  # passed: the broken variant was caught
    assert A._broken_audit is False and A._bounding_off is False  # the switch is off again


def test_bounding_at_k_rows():
    """With bounding the worst-case unit adds k to its cell whatever the key; without, every one of its rows."""
    d0, d1 = A.neighbouring_tables(unit_rows=12, k=3)
    for _ in range(3):
        key = BoundingKey.fresh()
        diff = A.bounded_cube(*d1, 3, key) - A.bounded_cube(*d0, 3, key)
        assert diff[A.TARGET_CELL] == 3 and np.count_nonzero(diff) == 1
    with A.bounding_disabled_for_tests():
        key = BoundingKey.fresh()
        assert (A.bounded_cube(*d1, 3, key) - A.bounded_cube(*d0, 3, key))[A.TARGET_CELL] == 12


def test_hook_refuses_outside_pytest(monkeypatch):
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    with pytest.raises(RuntimeError, match="pytest"):
        with A.bounding_disabled_for_tests():
            pass
    assert A._bounding_off is False


def test_audit_refuses_without_noise():
    # in a child process: the noise switch is sticky, and this process must stay able to release
    out = run_fresh("""
        import pytest
        from dpbeam.evaluate import audit as A
        from dpbeam.privacy.noise import noise_disabled_for_tests
        with noise_disabled_for_tests(), pytest.raises(RuntimeError, match="noise"):
            A.run_audit(1.0, 1e-9, runs=20_000)
        print("refused")
    """)
    assert out.strip().endswith("refused")


def test_clopper_pearson():
    # zero successes: the exact upper bound is 1 - alpha^(1/n)
    assert math.isclose(float(A.clopper_pearson_upper(0, 1000, 0.025)), 1 - 0.025 ** (1 / 1000), rel_tol=1e-9)
    assert float(A.clopper_pearson_upper(1000, 1000, 0.025)) == 1.0
    # it bounds the point estimate from above
    assert 0.1 < float(A.clopper_pearson_upper(100, 1000, 0.025)) < 0.13


def test_lower_bound_on_known_distributions():
    n = 20_000
    # perfectly separated: FPR = FNR = 0 on the evaluation half; the bound is log((1 - d - u) / u), u = 1 - a^(1/n)
    lb = A.epsilon_lower_bound(np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64), 1e-9, 0.95)
    u = 1 - 0.025 ** (1 / (n // 2))
    assert math.isclose(lb["epsilon_lower_bound"], math.log((1 - 1e-9 - u) / u), rel_tol=1e-6)
    # identical distributions: no test beats chance, so the bound is ~0 (seeded; 10,000 runs give slack < 0.1)
    rng = np.random.default_rng(0)
    same = A.epsilon_lower_bound(rng.integers(0, 50, n), rng.integers(0, 50, n), 1e-9, 0.95)
    assert same["epsilon_lower_bound"] < 0.1


def test_gaussian_epsilon_matches_the_accountant_scale():
    # the exact Gaussian epsilon is below the zCDP conversion's (which is an upper bound), and close to it
    from dpbeam.privacy.accountant import rho_for

    rho = rho_for(1.0, 1e-9)
    eps = A.gaussian_epsilon(math.sqrt(2 * rho), 1e-9)
    assert 0.8 < eps < 1.0


def test_audit_command():
    from typer.testing import CliRunner

    from dpbeam.cli import app

    res = CliRunner().invoke(app, ["audit", "--epsilon", "1", "--delta", "1e-9", "--runs", "10000"])
    assert res.exit_code == 0, res.output
    assert res.output.count("as expected") == 2 and "broken variant" in res.output
