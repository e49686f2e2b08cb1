"""Loading what an evaluation compares: the real table (from a spec or a path), the synthetic table, its release
statement, and the release's domain and privacy record (from its measurements artifact).

Trusted side only: the real table is read whole into memory (evaluations sample it where they need less).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dpbeam import lake
from dpbeam.domain import TableDomain, spec_arrow_type
from dpbeam.encode import encode_batch
from dpbeam.errors import SourceError, SpecError
from dpbeam.measurements import MeasurementsArtifact
from dpbeam.spec import JobSpec, load_spec


def is_spec(path: str | Path) -> bool:
    return str(path).endswith((".yaml", ".yml"))


def read_table(uri: str, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file or directory, or a CSV file, read whole (files starting with ``_`` or ``.`` are skipped)."""
    fs, path = lake.filesystem(uri)
    if not fs.exists(path):
        raise SourceError(f"{uri} does not exist; give a Parquet file or directory, or a CSV file")
    if path.endswith((".csv", ".csv.gz")):
        with fs.open(path, "rb", compression="infer") as f:
            table = pacsv.read_csv(f)
    else:
        table = pq.read_table(path, filesystem=fs)
    if columns is not None:
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise SpecError(f"{uri} lacks the released column(s) {missing}; evaluate against the table the release "
                            "was made from")
        table = table.select(columns)
    return table


def read_spec_source(spec: JobSpec) -> pa.Table:
    """The spec's source table, read as the job reads it (CSV types from the spec), all rows."""
    from dpbeam.source import open_source

    types = {n: spec_arrow_type(c) for n, c in spec.columns.items()}
    source = open_source(spec.source, column_types=types)
    cols = list(spec.columns) + ([spec.privacy.unit_column] if spec.privacy.unit_column else [])
    return pa.Table.from_batches(list(source.batches(cols)))


def read_real(spec_or_path: str | Path, columns: list[str] | None = None) -> tuple[pa.Table, JobSpec | None]:
    """The real table from a job spec (its source) or from a data path."""
    if is_spec(spec_or_path):
        spec = load_spec(spec_or_path)
        table = read_spec_source(spec)
        return (table.select(columns) if columns else table), spec
    return read_table(str(spec_or_path), columns), None


@dataclass(frozen=True)
class Release:
    """A synthetic table and what describes it: statement (``_release.json``), domain and privacy record."""

    table: pa.Table
    statement: dict
    domain: TableDomain
    privacy: dict
    uri: str
    measurements_uri: str


def read_release(synth_uri: str, measurements_uri: str | None = None) -> Release:
    """The synthetic table at ``synth_uri`` and its measurements artifact (default: ``<synth_uri>.measurements``,
    where ``dpbeam run`` writes it)."""
    fs, path = lake.filesystem(synth_uri)
    if not fs.exists(f"{path}/{lake.SUCCESS}"):
        raise SourceError(f"{synth_uri} is not a complete synthetic table (no _SUCCESS); give the directory "
                          "`dpbeam run` or `dpbeam synthesize` wrote")
    m_uri = measurements_uri or synth_uri.rstrip("/") + ".measurements"
    if not lake.filesystem(m_uri)[0].exists(lake.filesystem(m_uri)[1]):
        raise SourceError(f"no measurements artifact at {m_uri}; pass --measurements with the artifact the table was "
                          "synthesized from")
    artifact = MeasurementsArtifact.read(m_uri)
    table = pq.read_table(path, filesystem=fs)
    return Release(table, lake.read_json(synth_uri, "_release.json"), artifact.domain, artifact.privacy, synth_uri,
                   m_uri)


def codes(table: pa.Table, domain: TableDomain) -> np.ndarray:
    """The code matrix of ``table`` in the release's domain (values outside it clamp or map to "other")."""
    return encode_batch(table.select(domain.names), domain)
