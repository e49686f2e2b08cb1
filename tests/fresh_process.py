"""Run test code in a fresh Python process.

The test-only noise switch (:func:`dpbeam.privacy.noise.noise_disabled_for_tests`) is sticky: once used, its process
can never write a privacy record, an artifact or a release statement. Tests that switch noise off therefore run that
part in a child process, so the pytest process itself stays able to release.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def run_fresh(code: str, *args: str, timeout: float = 600) -> str:
    """Run ``code`` (Python source) in a child interpreter with ``args`` as ``sys.argv[1:]``; return its stdout.

    The child sees this checkout's dpbeam and the tests directory (for conftest helpers) and inherits the environment,
    including PYTEST_CURRENT_TEST, which the noise switch requires. A child that fails fails the test with its output.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(TESTS), env.get("PYTHONPATH", "")) if p)
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env["PYSPARK_PYTHON"] = env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"child process failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout
