"""Tables that ship with dpbeam for demos, tests and benchmarks (public data only)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def adult_dir() -> Path:
    """The directory of the embedded UCI Adult table: adult.csv, adult-domain.json, adult.yaml (the demo spec)."""
    return Path(str(resources.files("dpbeam.datasets") / "adult"))
