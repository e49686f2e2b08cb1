"""The test-only noise switch (issue 7, finding 9): once noise was off in a process, that process can write no privacy
record, no measurements artifact and no release statement, ever. The switch is used only in child processes
(tests/fresh_process.py), so this pytest process stays able to release."""

from __future__ import annotations

import numpy as np
import pytest

from dpbeam.domain import BinnedDomain, TableDomain
from dpbeam.measurements import MeasurementsArtifact, NoisyMarginal
from dpbeam.privacy import noise
from dpbeam.synth.generate import release_statement
from fresh_process import run_fresh

_AFTER_THE_SWITCH = """
import os, sys
import numpy as np
from conftest import small_spec
from dpbeam.job import measure, plan_job, run_job
from dpbeam.privacy.accountant import ZCDPAccountant
from dpbeam.privacy.noise import NoiseWasDisabledError, add_discrete_gaussian, noise_disabled_for_tests
from dpbeam.spec import parse_spec
from dpbeam.synth.generate import release_statement

source, out = sys.argv[1:3]
spec = parse_spec(small_spec(source, out))
plan = plan_job(spec)
artifact = measure(plan)  # measured with noise on, before the switch: still refused after it
acc = ZCDPAccountant(1.0, 1e-6, {"a": 1.0})
with noise_disabled_for_tests():
    exact, _ = add_discrete_gaussian(np.arange(5), 1.0, 1)
assert exact.tolist() == [0, 1, 2, 3, 4]
noisy, _ = add_discrete_gaussian(np.arange(5), 1.0, 1)  # noise is back on, but the process is marked for good

refused = []
for what, attempt in [
    ("record", lambda: acc.record()),
    ("artifact", lambda: artifact.write(spec.output.resolved_measurements_uri)),
    ("statement", lambda: release_statement(artifact, {})),
    ("job", lambda: run_job(spec)),
]:
    try:
        attempt()
    except NoiseWasDisabledError as err:
        assert "noise_disabled_for_tests" in str(err) and "fresh process" in str(err), err
        refused.append(what)
assert not os.path.exists(spec.output.resolved_measurements_uri) and not os.path.exists(spec.output.uri)
print(" ".join(refused))
"""


def test_nothing_is_released_after_noise_was_off(small_parquet, tmp_path):
    out = run_fresh(_AFTER_THE_SWITCH, small_parquet, str(tmp_path / "out"))
    assert out.split() == ["record", "artifact", "statement", "job"]


def test_this_process_never_switched_noise_off():
    """Guards the rule above: no test in the pytest process itself uses the switch (it would stop every later test
    from releasing)."""
    assert not noise.noise_was_disabled()


def _artifact(privacy: dict) -> MeasurementsArtifact:
    domain = TableDomain((BinnedDomain("a", "int64", False, edges=(0, 1, 2)),))
    return MeasurementsArtifact(domain, {}, (NoisyMarginal(("a",), np.array([3.0, 4.0]), 1.0, "t", 0.1),), privacy)


@pytest.mark.parametrize("privacy", [{"noise_disabled_for_tests": True, "epsilon": 1.0}, {}])
def test_a_record_without_a_claim_is_never_written(privacy, tmp_path):
    """An artifact whose privacy record says noise was off (made in another process), or that makes no claim at all,
    cannot be written or given a release statement, even in a clean process."""
    art = _artifact(privacy)
    with pytest.raises(noise.NoiseWasDisabledError):
        art.write(str(tmp_path / "m"))
    with pytest.raises(noise.NoiseWasDisabledError):
        release_statement(art, {})
    assert not (tmp_path / "m").exists()


def test_the_switch_refuses_outside_pytest(tmp_path):
    """Outside pytest (no PYTEST_CURRENT_TEST) the switch raises and marks nothing."""
    out = run_fresh("""
import os
os.environ.pop("PYTEST_CURRENT_TEST", None)
from dpbeam.privacy.noise import noise_disabled_for_tests, noise_was_disabled
try:
    with noise_disabled_for_tests():
        pass
except RuntimeError as err:
    print("refused", noise_was_disabled())
""")
    assert out.split() == ["refused", "False"]

