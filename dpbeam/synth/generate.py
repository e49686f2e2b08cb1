"""Generation: rows from a fitted model, streamed in chunks to Parquet, committed atomically with a release statement.

Post-processing only. Memory is bounded by the chunk size, not by the number of rows: at most ``LOOKAHEAD`` + 2
chunks of ``DEFAULT_CHUNK_ROWS`` rows (two being prepared, one waiting, one being written) plus the writer's one row
group (:class:`dpbeam.lake.DatasetWriter`) are held at a time. Each chunk is sampled,
expanded from the model domain to the original codes and decoded to values on a worker thread, at most
``LOOKAHEAD`` chunks ahead of the writer, which takes them in order. Every chunk has its own seed (spawned from the
job's seed by its index), so the rows do not depend on the threads.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Protocol

import numpy as np
import pyarrow as pa

from dpbeam import lake
from dpbeam.domain import arrow_type_from_str
from dpbeam.encode import decode_codes
from dpbeam.measurements import MeasurementsArtifact
from dpbeam.privacy.accountant import privacy_profile
from dpbeam.privacy.noise import NoiseWasDisabledError, require_noise_never_disabled
from dpbeam.promise import statement_text
from dpbeam.progress import Reporter
from dpbeam.versions import library_versions

DEFAULT_CHUNK_ROWS = 262_144  # one sampler block; the writer gathers chunks into full row groups
LOOKAHEAD = 2  # chunks prepared ahead of the writer (numpy and Arrow release the GIL: the writer and they overlap)
# A chunk holds at most this many cells (rows x columns), so that a wide table's chunk is no larger than a narrow
# one's: at 100 columns a 1M-row chunk took the job's peak from 2.7 GB (after the fit) to 4.4 GB.
DEFAULT_CHUNK_CELLS = 16_000_000


class FittedModel(Protocol):
    engine: str

    def sample(self, rows: int, seed: int) -> np.ndarray:
        """Model-domain codes, shape (rows, columns), columns in the artifact's domain order."""


def output_schema(artifact: MeasurementsArtifact) -> pa.Schema:
    return pa.schema(
        [pa.field(c.name, arrow_type_from_str(c.arrow_type), nullable=c.nullable) for c in artifact.domain.columns]
    )


def release_statement(artifact: MeasurementsArtifact, synthesis: dict[str, Any]) -> dict[str, Any]:
    """The promise that travels with the table: who is protected, how strongly, by what, made with what.

    The text is :mod:`dpbeam.promise`'s; the figures are the budget's (never a realised spend), with the privacy
    profile. Refused in a process where noise was switched off by the test hook, and for an artifact whose privacy
    record makes no claim. ``created`` is the only timestamp of a release (the artifact has none)."""
    require_noise_never_disabled("a release statement")
    p = artifact.privacy
    if p.get("noise_disabled_for_tests") or "epsilon" not in p:
        raise NoiseWasDisabledError("refusing to write a release statement for measurements whose privacy record "
                                    "makes no privacy claim (noise was switched off by a test hook)")
    discovered_values = _discovered_values(artifact)
    # artifacts written before the record named these (format 1 from earlier versions) get them from the budget
    thresholds = p.get("delta_thresholds", p.get("delta_reserved_for_thresholds", 0.0))
    p = {**p, "delta_thresholds": thresholds}
    return {
        "statement": statement_text(p, discovered_values),
        "privacy_unit": p["privacy_unit"],
        "adjacency": p["adjacency"],
        "guarantee": "approximate zCDP" if thresholds > 0 else "zCDP",
        "epsilon": p["epsilon"],
        "delta": p["delta"],
        "rho": p["rho"],
        "delta_thresholds": thresholds,
        "privacy_profile": p.get("privacy_profile") or privacy_profile(p["rho"], thresholds),
        "max_rows_per_unit": p["max_rows_per_unit"],
        "null_units": p.get("null_units"),  # rows whose privacy unit was null: "drop" (row-wise filter) or "error"
        "discovery_diagnostics": artifact.manifest.get("diagnostics", []),
        "discovered_values": discovered_values,
        "stages": p["stages"],  # rho_charged per stage: information only (see "charged"), not the guarantee
        "charged": p.get("charged"),
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


def _chunk(model: FittedModel, artifact: MeasurementsArtifact, n: int, ss: np.random.SeedSequence) -> pa.Table:
    """One chunk of ``n`` rows from its own seed: sampled, expanded to the original codes, decoded to values."""
    rng = np.random.default_rng(ss)
    codes = model.sample(n, seed=int(ss.generate_state(1)[0]))
    return decode_codes(artifact.expand_codes(codes, rng), artifact.domain, rng)


def _chunks(model: FittedModel, artifact: MeasurementsArtifact, rows: int, seed: int,
            chunk_rows: int) -> Iterator[pa.Table]:
    """The chunks in order, each prepared on a worker thread at most ``LOOKAHEAD`` ahead of the consumer."""
    n_chunks = max(1, -(-rows // chunk_rows))
    seeds = np.random.SeedSequence(seed).spawn(n_chunks)
    sizes = [min(chunk_rows, rows - i * chunk_rows) for i in range(n_chunks)]
    with ThreadPoolExecutor(LOOKAHEAD) as pool:
        pending: deque = deque()
        for n, ss in zip(sizes, seeds):
            pending.append(pool.submit(_chunk, model, artifact, n, ss))
            if len(pending) > LOOKAHEAD:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _discovered_values(artifact: MeasurementsArtifact) -> list[str]:
    """Columns whose categorical values were discovered from the data (real values, DP-selected)."""
    p = artifact.privacy
    if "discovered_values" in p:
        return list(p["discovered_values"])
    kinds = {c.name: c.kind for c in artifact.domain.columns}
    return [n for n in p.get("discovered_columns", []) if kinds.get(n) == "categorical"]


def write_synthetic_table(
    model: FittedModel,
    artifact: MeasurementsArtifact,
    uri: str,
    rows: int,
    seed: int,
    synthesis: dict[str, Any],
    overwrite: bool = False,
    chunk_rows: int | None = None,
    reporter: Reporter | None = None,
    layout: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sample ``rows`` rows chunk by chunk (default: :data:`DEFAULT_CHUNK_ROWS` rows, fewer for a table so wide
    that a chunk would pass :data:`DEFAULT_CHUNK_CELLS` cells) and commit them with ``_release.json`` and ``_README.md``; return the release
    statement. ``layout``: file sizing and partitioning (:class:`dpbeam.lake.DatasetWriter`). The statement's
    synthesis section records post-processing durations only (fit, generate and write): they depend on the
    measurements and the row count asked for, never on the sensitive table."""
    reporter = reporter or Reporter()
    t0 = time.perf_counter()
    schema = output_schema(artifact)
    chunk_rows = chunk_rows or max(1, min(DEFAULT_CHUNK_ROWS, DEFAULT_CHUNK_CELLS // max(1, len(artifact.domain.names))))
    with lake.atomic_directory(uri, overwrite=overwrite) as tmp:
        writer = lake.DatasetWriter(tmp, schema, **(layout or {}))
        with reporter.stage("generating rows", total=rows) as advance:
            for table in _chunks(model, artifact, rows, seed, chunk_rows):
                writer.write(table)
                advance(table.num_rows)
        writer.close()
        synthesis = {**synthesis, "rows": writer.rows, "seed": seed,
                     "generate_seconds": round(time.perf_counter() - t0, 3)}
        statement = release_statement(artifact, synthesis)
        lake.write_release(tmp, statement)
    return statement
