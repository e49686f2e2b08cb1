"""Versions of the libraries a release depends on, for the release statement."""

from __future__ import annotations

from importlib import metadata

_PACKAGES = ("dpbeam", "opendp", "mbi", "jax", "numpy", "pyarrow", "pandas", "torch", "apache-beam", "pyspark")


def library_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
