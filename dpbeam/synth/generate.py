"""Generation: rows from a fitted model, streamed in chunks to Parquet, committed atomically with a release statement.

Post-processing only. Memory is bounded by the chunk size, not by the number of rows: each chunk is sampled,
expanded from the model domain to the original codes, decoded to values and written before the next one starts.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from dpbeam import lake
from dpbeam.domain import arrow_type_from_str
from dpbeam.encode import decode_codes
from dpbeam.measurements import MeasurementsArtifact
from dpbeam.progress import Reporter
from dpbeam.versions import library_versions

DEFAULT_CHUNK_ROWS = 1_000_000


class FittedModel(Protocol):
    engine: str

    def sample(self, rows: int, seed: int) -> np.ndarray:
        """Model-domain codes, shape (rows, columns), columns in the artifact's domain order."""


def output_schema(artifact: MeasurementsArtifact) -> pa.Schema:
    return pa.schema(
        [pa.field(c.name, arrow_type_from_str(c.arrow_type), nullable=c.nullable) for c in artifact.domain.columns]
    )


def release_statement(artifact: MeasurementsArtifact, synthesis: dict[str, Any]) -> dict[str, Any]:
    """The promise that travels with the table: who is protected, how strongly, by what, made with what."""
    p = artifact.privacy
    unit = p["privacy_unit"]
    statement = (
        f"Differentially private synthetic table. Releasing it (and the measurements it was made from) satisfies "
        f"({p['epsilon_spent']:.6g}, {p['delta']:g})-differential privacy, from {p['rho_spent']:.6g}-zCDP, for the "
        f"addition or removal of one privacy unit ({unit}) together with all of its rows; at most "
        f"{p['max_rows_per_unit']} row(s) per unit were used. Every row was generated from noisy measurements; no "
        f"real row or value was copied."
    )
    if p.get("noise_disabled_for_tests"):
        statement = "NOT PRIVATE: noise was switched off by a test hook. " + statement
    return {
        "statement": statement,
        "privacy_unit": unit,
        "adjacency": p["adjacency"],
        "epsilon": p["epsilon_spent"],
        "delta": p["delta"],
        "rho": p["rho_spent"],
        "epsilon_requested": p["epsilon"],
        "rho_budget": p["rho"],
        "max_rows_per_unit": p["max_rows_per_unit"],
        "stages": p["stages"],
        "mechanisms": sorted({c["mechanism"] for c in p["charges"]}),
        "measurements": {
            "method": artifact.manifest.get("method"),
            "cliques": [list(m.clique) for m in artifact.measurements],
        },
        "synthesizer": synthesis,
        "spec_sha256": artifact.manifest.get("spec_sha256"),
        "lineage": artifact.manifest.get("lineage", {}),
        "library_versions": library_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
    }


def write_synthetic_table(
    model: FittedModel,
    artifact: MeasurementsArtifact,
    uri: str,
    rows: int,
    seed: int,
    synthesis: dict[str, Any],
    overwrite: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    reporter: Reporter | None = None,
    layout: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sample ``rows`` rows chunk by chunk and commit them with ``_release.json`` and ``_README.md``; return the release
    statement. ``layout``: file sizing and partitioning (:class:`dpbeam.lake.DatasetWriter`)."""
    reporter = reporter or Reporter()
    schema = output_schema(artifact)
    n_chunks = max(1, -(-rows // chunk_rows))
    seeds = np.random.SeedSequence(seed).spawn(n_chunks)
    with lake.atomic_directory(uri, overwrite=overwrite) as tmp:
        writer = lake.DatasetWriter(tmp, schema, **(layout or {}))
        with reporter.stage("generating rows", total=rows) as advance:
            for i, ss in enumerate(seeds):
                n = min(chunk_rows, rows - i * chunk_rows)
                rng = np.random.default_rng(ss)
                codes = model.sample(n, seed=int(ss.generate_state(1)[0]))
                table = decode_codes(artifact.expand_codes(codes, rng), artifact.domain, rng)
                writer.write(table)
                advance(n)
        writer.close()
        statement = release_statement(artifact, {**synthesis, "rows": writer.rows, "seed": seed})
        lake.write_release(tmp, statement)
    return statement
