"""The measurements artifact: everything that crosses the privacy boundary, and nothing else.

It is a directory a person can read:

    manifest.json          what made it: method, spec hash, library versions (no time: see below)
    privacy.json           the privacy record: unit, adjacency, k, epsilon, delta, rho and every charge
    domain.json            public column domains, the compression of rare codes chosen from noisy 1-way counts, and
                           those noisy counts (clipped at 0) for spreading a merged code back over its codes
    measurements.parquet   one row per noisy marginal: clique, shape, noisy values, noise scale, query weights and
                           groups (a coarse measurement's code -> group maps)
    rounds.json            AIM only: the round log (clique selected, sigma, rho of selection and measurement)
    _SUCCESS               written last

All of it is differentially private (noisy counts, and choices computed from noisy counts) or public (the spec's
domains, the source's schema). Synthesis reads only this directory. No timestamp is written: timing is not
protected, and the release statement's time alone does not time the trusted pass.

An artifact is never written from a process where the test-only noise switch was used
(:func:`dpbeam.privacy.noise.require_noise_never_disabled`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dpbeam import lake
from dpbeam.domain import TableDomain
from dpbeam.errors import SourceError
from dpbeam.privacy.noise import NoiseWasDisabledError, require_noise_never_disabled

FORMAT_VERSION = 1


@dataclass(frozen=True)
class NoisyMarginal:
    """One noisy measurement of a marginal in the model domain (after compression).

    ``values`` has the clique's shape. ``weights``, when set, says the measured vector is ``weights * marginal``
    (flattened), as MST does for a merged cell of rare values; otherwise the measurement is the marginal itself.
    ``groups``, when set, makes it a coarse measurement: ``groups[i]`` maps the model codes of the clique's i-th
    column to group codes, and ``values`` (shape: the groups') holds the marginal's cells summed within groups
    (:mod:`dpbeam.privacy.resolution`). ``stddev`` is the noise scale of every entry of ``values``.
    """

    clique: tuple[str, ...]
    values: np.ndarray
    stddev: float
    mechanism: str
    rho: float
    weights: np.ndarray | None = None
    groups: tuple[np.ndarray, ...] | None = None


def estimated_total(measurements: Sequence[NoisyMarginal]) -> float:
    """The minimum-variance estimate of the row count from identity-query measurements (post-processing)."""
    est, var = [], []
    for m in measurements:
        if m.weights is None:
            est.append(float(np.sum(m.values)))
            var.append(m.stddev**2 * m.values.size)
    if not est:
        return 1.0
    w = 1.0 / np.asarray(var)
    return max(1.0, float(np.sum(w * np.asarray(est)) / np.sum(w)))


@dataclass(frozen=True)
class MeasurementsArtifact:
    """The hand-off from the trusted side to synthesis."""

    domain: TableDomain
    compression: dict[str, np.ndarray]
    measurements: tuple[NoisyMarginal, ...]
    privacy: dict[str, Any]
    manifest: dict[str, Any] = field(default_factory=dict)
    rounds: tuple[dict[str, Any], ...] = ()  # AIM's round log: DP selections and their public noise scales
    # per compressed column, the weights (noisy 1-way counts, clipped at 0) that spread a merged code back over its
    # original codes; uniform where absent (artifacts written before them) or where a merged group's weights are 0
    expansion: dict[str, np.ndarray] = field(default_factory=dict)

    def model_size(self, name: str) -> int:
        """Codes of a column in the model domain: the compressed size, or the full size if not compressed."""
        m = self.compression.get(name)
        return int(m.max()) + 1 if m is not None else self.domain[name].size

    @property
    def model_sizes(self) -> dict[str, int]:
        return {n: self.model_size(n) for n in self.domain.names}

    def expand_codes(self, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Model-domain codes -> original codes. A merged code becomes one of its original codes, drawn in proportion
        to their noisy 1-way counts (:attr:`expansion`; uniformly when those are all 0 or absent): post-processing of
        DP outputs, so a null or rare code whose noisy count fell at or below 0 gets no rows."""
        out = np.empty(codes.shape, dtype=self.domain.code_dtype())
        for j, name in enumerate(self.domain.names):
            mapping = self.compression.get(name)
            if mapping is None:
                out[:, j] = codes[:, j]
                continue
            col = codes[:, j].astype(np.int64)
            # members[g] = the original codes merged into model code g, in order; each group's cumulative weights
            order = np.argsort(mapping, kind="stable")
            counts = np.bincount(mapping, minlength=int(mapping.max()) + 1)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            weights = self.expansion.get(name)
            w = np.ones(len(mapping)) if weights is None else np.asarray(weights, dtype=np.float64)[order]
            group_total = np.bincount(mapping[order], weights=w, minlength=len(counts))
            w = np.where(group_total[mapping[order]] > 0, w, 1.0)  # a group with no weight: uniform
            cum = np.cumsum(w)
            base = np.concatenate([[0.0], cum])[starts]  # cumulative weight before each group
            u = base[col] + rng.random(len(col)) * (cum[starts + counts - 1] - base)[col]
            pick = np.minimum(np.searchsorted(cum, u, side="right"), starts[col] + counts[col] - 1)
            out[:, j] = order[pick]
        return out

    def estimated_total(self) -> float:
        return estimated_total(self.measurements)

    # ------------------------------------------------------------------------------------------------------------------
    # Files

    def write(self, uri: str, overwrite: bool = False) -> None:
        """Write the artifact directory atomically (temp dir, rename, ``_SUCCESS`` last).

        Refused in a process where noise was switched off by the test hook, and for a record that makes no privacy
        claim."""
        require_noise_never_disabled("a measurements artifact")
        if self.privacy.get("noise_disabled_for_tests") or "epsilon" not in self.privacy:
            raise NoiseWasDisabledError("refusing to write a measurements artifact whose privacy record makes no "
                                        "privacy claim (noise was switched off by a test hook)")
        with lake.atomic_directory(uri, overwrite=overwrite) as tmp:
            lake.write_json(tmp, "manifest.json", {"format_version": FORMAT_VERSION, **self.manifest})
            lake.write_json(tmp, "privacy.json", self.privacy)
            if self.rounds:
                lake.write_json(tmp, "rounds.json", {"rounds": list(self.rounds)})
            lake.write_json(
                tmp,
                "domain.json",
                {
                    "columns": self.domain.to_json(),
                    "labels": {c.name: c.labels() for c in self.domain.columns},
                    "compression": {k: v.tolist() for k, v in self.compression.items()},
                    "expansion": {k: v.tolist() for k, v in self.expansion.items()},
                },
            )
            table = pa.table(
                {
                    "clique": pa.array([list(m.clique) for m in self.measurements], type=pa.list_(pa.string())),
                    "shape": pa.array([list(m.values.shape) for m in self.measurements], type=pa.list_(pa.int64())),
                    "values": pa.array([m.values.ravel().tolist() for m in self.measurements], type=pa.list_(pa.float64())),
                    "stddev": pa.array([m.stddev for m in self.measurements], type=pa.float64()),
                    "weights": pa.array(
                        [None if m.weights is None else m.weights.ravel().tolist() for m in self.measurements],
                        type=pa.list_(pa.float64()),
                    ),
                    "groups": pa.array(
                        [None if m.groups is None else [g.tolist() for g in m.groups] for m in self.measurements],
                        type=pa.list_(pa.list_(pa.int64())),
                    ),
                    "mechanism": pa.array([m.mechanism for m in self.measurements], type=pa.string()),
                    "rho": pa.array([m.rho for m in self.measurements], type=pa.float64()),
                }
            )
            fs, path = lake.filesystem(tmp)
            with fs.open(f"{path}/measurements.parquet", "wb") as f:
                pq.write_table(table, f)

    @classmethod
    def read(cls, uri: str) -> "MeasurementsArtifact":
        fs, path = lake.filesystem(uri)
        if not fs.exists(f"{path}/_SUCCESS"):
            raise SourceError(
                f"{uri} is not a complete measurements artifact (no _SUCCESS); run `dpbeam measure` to make one"
            )
        manifest = lake.read_json(uri, "manifest.json")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise SourceError(f"{uri} has format version {manifest.get('format_version')}; this dpbeam reads {FORMAT_VERSION}")
        dom = lake.read_json(uri, "domain.json")
        with fs.open(f"{path}/measurements.parquet", "rb") as f:
            rows = pq.read_table(f).to_pylist()
        measurements = tuple(
            NoisyMarginal(
                clique=tuple(r["clique"]),
                values=np.asarray(r["values"], dtype=np.float64).reshape(r["shape"]),
                stddev=r["stddev"],
                mechanism=r["mechanism"],
                rho=r["rho"],
                weights=None if r["weights"] is None else np.asarray(r["weights"], dtype=np.float64).reshape(r["shape"]),
                groups=None if r.get("groups") is None else tuple(np.asarray(g, dtype=np.int64) for g in r["groups"]),
            )
            for r in rows
        )
        return cls(
            domain=TableDomain.from_json(dom["columns"]),
            compression={k: np.asarray(v, dtype=np.int64) for k, v in dom["compression"].items()},
            measurements=measurements,
            privacy=lake.read_json(uri, "privacy.json"),
            manifest=manifest,
            rounds=tuple(lake.read_json(uri, "rounds.json")["rounds"]) if fs.exists(f"{path}/rounds.json") else (),
            expansion={k: np.asarray(v, dtype=np.float64) for k, v in dom.get("expansion", {}).items()},
        )
