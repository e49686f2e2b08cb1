"""The lake: URIs (local, gs://, s3://, anything fsspec knows), atomic directory commits, JSON files, table formats.

A directory dpbeam writes becomes visible all at once: it is written under a hidden temporary sibling, renamed into
place, and marked complete by ``_SUCCESS``, written last. Readers (and dpbeam itself) treat a directory without
``_SUCCESS`` as absent. On object stores, where a rename is a copy, ``_SUCCESS`` is the commit point.

The synthetic table is a Parquet dataset (pyarrow datasets: files of at most ``max_rows_per_file`` rows, row groups
of ``row_group_rows``, optionally hive-partitioned by one column) with its release statement beside it
(``_release.json``) and ``_README.md`` a person can read. It can also be registered as an Apache Iceberg table (a SQL
catalog) or a Delta Lake table: each release is one new snapshot/version (the old ones stay readable), carrying the
release statement in the table's properties. Their own commit protocols make them atomic: files first, then one
metadata commit.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import TYPE_CHECKING, Any, Iterator

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs

from dpbeam.errors import OutputExistsError

if TYPE_CHECKING:
    import pyarrow.dataset as pads

# pyarrow.dataset is imported where it is used: importing the post-processing modules loads no dataset reader (a test
# checks that synthesis cannot reach the source readers).

SUCCESS = "_SUCCESS"
README = "_README.md"
ICEBERG_CATALOG = "dpbeam"  # the catalog name dpbeam registers Iceberg tables under, in the SQL catalog


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the path within it for ``uri``."""
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path.rstrip("/")


def holds_something(uri: str) -> bool:
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return False
    return not fs.isdir(path) or bool(fs.ls(path))


def check_output_free(uri: str, overwrite: bool, what: str = "output") -> None:
    """Refuse to write over an existing table unless ``overwrite`` was asked for."""
    if not overwrite and holds_something(uri):
        raise OutputExistsError(
            f"{what} {uri} already exists and holds data; choose another location, delete it, "
            "or ask for overwrite (output.overwrite: true in the spec, --overwrite on the command line)"
        )


@contextlib.contextmanager
def atomic_directory(uri: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary directory URI to fill; on success it replaces ``uri`` and gets ``_SUCCESS``.

    On any exception the temporary directory is removed and ``uri`` is left as it was.
    """
    check_output_free(uri, overwrite)
    fs, path = filesystem(uri)
    parent, _, name = path.rpartition("/")
    tag = uuid.uuid4().hex[:12]
    tmp_path = f"{parent}/.{name}.tmp-{tag}"
    protocol = uri.split("://", 1)[0] + "://" if "://" in uri else ""
    tmp_uri = protocol + tmp_path if protocol and protocol != "file://" else tmp_path
    fs.makedirs(tmp_path, exist_ok=True)
    try:
        yield tmp_uri
    except BaseException:
        fs.rm(tmp_path, recursive=True)
        raise
    old = None
    if fs.exists(path):
        old = f"{parent}/.{name}.old-{tag}"
        fs.mv(path, old, recursive=True)
    fs.mv(tmp_path, path, recursive=True)
    with fs.open(f"{path}/{SUCCESS}", "wb") as f:
        f.write(b"")
    if old is not None:
        fs.rm(old, recursive=True)


def write_json(dir_uri: str, name: str, obj: Any) -> None:
    fs, path = filesystem(dir_uri)
    with fs.open(f"{path}/{name}", "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")


def read_json(dir_uri: str, name: str) -> Any:
    fs, path = filesystem(dir_uri)
    with fs.open(f"{path}/{name}", "r") as f:
        return json.load(f)


def arrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for ``uri``: pyarrow's own for local paths, fsspec's wrapped otherwise."""
    fs, path = filesystem(uri)
    if "://" not in uri or uri.startswith("file://"):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


class DatasetWriter:
    """Writes a stream of Arrow tables as a Parquet dataset: files of at most ``max_rows_per_file`` rows, row groups
    of ``row_group_rows``, hive directories ``column=value`` when ``partition_by`` is given.

    Memory is bounded by one row group (``row_group_rows`` rows) plus the table being written, whatever the number of
    rows or the file size: rows are written as row groups as they come, through one open
    :class:`pyarrow.parquet.ParquetWriter` per file (a new file starts when the open one holds ``max_rows_per_file``
    rows). With ``partition_by`` each full row group is written as a dataset of its own (one file per partition value
    and row group, named by the row group's index)."""

    def __init__(self, dir_uri: str, schema: pa.Schema, max_rows_per_file: int = 5_000_000,
                 row_group_rows: int = 1_000_000, partition_by: str | None = None):
        import pyarrow.dataset as pads

        self.fs, self.path = arrow_filesystem(dir_uri)
        self.schema = schema
        self.max_rows_per_file = max_rows_per_file
        self.row_group_rows = min(row_group_rows, max_rows_per_file)
        self.partitioning = (
            pads.partitioning(pa.schema([schema.field(partition_by)]), flavor="hive") if partition_by else None
        )
        self.parts = 0  # files started (or, partitioned, row groups written)
        self.rows = 0
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._file: Any = None  # the open ParquetWriter
        self._file_rows = 0

    def write(self, table: pa.Table) -> None:
        table = table.cast(self.schema)
        self.rows += table.num_rows
        while table.num_rows:
            room = self.row_group_rows - self._buffered
            head, table = table.slice(0, room), table.slice(room)
            self._buffer.append(head)
            self._buffered += head.num_rows
            if self._buffered >= self.row_group_rows:
                self._flush()

    def _flush(self) -> None:
        """Write the buffered rows (at most one row group) and empty the buffer."""
        if not self._buffered:
            self._buffer = []
            return
        data = pa.concat_tables(self._buffer)
        self._buffer, self._buffered = [], 0
        if self.partitioning is not None:
            self._write_partitioned(data)
            return
        while data.num_rows:
            if self._file is None:
                self._open_file()
            room = self.max_rows_per_file - self._file_rows
            head, data = data.slice(0, room), data.slice(room)
            self._file.write_table(head, row_group_size=self.row_group_rows)
            self._file_rows += head.num_rows
            if self._file_rows >= self.max_rows_per_file:
                self._close_file()

    def _open_file(self) -> None:
        import pyarrow.parquet as pq

        name = f"{self.path}/part-{self.parts:05d}-0.parquet"
        self._file = pq.ParquetWriter(name, self.schema, filesystem=self.fs, compression="zstd")
        self._file_rows = 0
        self.parts += 1

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write_partitioned(self, data: pa.Table) -> None:
        import pyarrow.dataset as pads

        pads.write_dataset(
            data, self.path, filesystem=self.fs, format="parquet", partitioning=self.partitioning,
            basename_template=f"part-{self.parts:05d}-{{i}}.parquet", existing_data_behavior="overwrite_or_ignore",
            max_rows_per_file=self.max_rows_per_file, max_rows_per_group=self.row_group_rows,
            file_options=pads.ParquetFileFormat().make_write_options(compression="zstd"),
        )
        self.parts += 1

    def close(self) -> None:
        self._flush()
        self._close_file()


def read_dataset(uri: str, partition_by: str | None = None, schema: pa.Schema | None = None) -> pads.Dataset:
    """The committed Parquet dataset at ``uri``; refused when it has no ``_SUCCESS`` (absent or half-written)."""
    import pyarrow.dataset as pads

    fs, path = arrow_filesystem(uri)
    if not filesystem(uri)[0].exists(f"{path}/{SUCCESS}"):
        raise FileNotFoundError(f"{uri} holds no committed table (no {SUCCESS})")
    part = pads.partitioning(pa.schema([schema.field(partition_by)]), flavor="hive") if partition_by and schema \
        else ("hive" if partition_by else None)
    return pads.dataset(path, filesystem=fs, format="parquet", partitioning=part,
                        exclude_invalid_files=False, ignore_prefixes=[".", "_"])


# ----------------------------------------------------------------------------------------------------------------------
# The release statement beside the data


def write_release(dir_uri: str, statement: dict[str, Any]) -> None:
    """``_release.json`` (the statement) and ``_README.md`` (the same, for a person) in the output directory. The
    README's name starts with an underscore so that Parquet readers (pyarrow, Spark) skip it, as they skip
    ``_SUCCESS``: a README.md among the part files would break every reader of the directory."""
    write_json(dir_uri, "_release.json", statement)
    fs, path = filesystem(dir_uri)
    with fs.open(f"{path}/{README}", "w") as f:
        f.write(release_readme(statement))


def release_readme(statement: dict[str, Any]) -> str:
    """A README for the output directory. It quotes the statement's promise text; it does not restate it."""

    def num(x: Any) -> str:
        return f"{x:.6g}" if isinstance(x, float) else str(x)

    lines = ["# Differentially private synthetic table", "", "## The guarantee", "",
             "> " + str(statement.get("statement", "")), ""]
    facts = [("privacy unit", "privacy_unit"), ("adjacency", "adjacency"), ("epsilon", "epsilon"),
             ("delta", "delta"), ("rho (zCDP)", "rho"), ("max rows per unit (k)", "max_rows_per_unit"),
             ("mechanisms", "mechanisms"), ("spec sha256", "spec_sha256"), ("created", "created")]
    lines += ["| | |", "| --- | --- |"]
    for label, key in facts:
        if key in statement:
            value = statement[key]
            lines.append(f"| {label} | {', '.join(map(str, value)) if isinstance(value, list) else num(value)} |")
    stages = statement.get("stages") or {}
    if stages:
        lines += ["", "## Budget per stage", "", "| stage | fraction | rho allotted |", "| --- | --- | --- |"]
        for name, st in stages.items():
            lines.append(f"| {name} | {num(st.get('fraction'))} | {num(st.get('rho_allotted'))} |")
    lineage = statement.get("lineage") or {}
    if lineage:
        lines += ["", "## Lineage", "", "| | |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in lineage.items()]
    versions = statement.get("library_versions") or {}
    if versions:
        lines += ["", "## Made with", "", ", ".join(f"{k} {v}" for k, v in versions.items())]
    lines += ["", "The full statement is `_release.json` beside this file. Files of a release are visible only once "
              f"`{SUCCESS}` exists.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Table formats


def register_table(table: Any, data_uri: str, statement: dict[str, Any], partition_by: str | None = None,
                   default_location: str | None = None) -> dict[str, Any]:
    """Publish the committed dataset at ``data_uri`` as a new snapshot (Iceberg) or version (Delta) of ``table``
    (a :class:`dpbeam.spec.TableSpec`), with the statement in the table's properties. Returns the table reference
    (format, where, snapshot or version) for lineage."""
    dataset = read_dataset(data_uri, partition_by)
    if table.format == "iceberg":
        return _register_iceberg(table, dataset, statement)
    return _register_delta(table.location or default_location, dataset, statement, partition_by)


def _statement_properties(statement: dict[str, Any]) -> dict[str, str]:
    lineage = statement.get("lineage") or {}
    return {
        "dpbeam.release": json.dumps(statement, sort_keys=True, default=str),
        "dpbeam.spec_sha256": str(statement.get("spec_sha256")),
        **({"dpbeam.ledger_entry": lineage["ledger_entry"]} if "ledger_entry" in lineage else {}),
    }


def _register_iceberg(table: Any, dataset: pads.Dataset, statement: dict[str, Any]) -> dict[str, Any]:
    import warnings

    from pyiceberg.catalog.sql import SqlCatalog

    from dpbeam.privacy.ledger import redact

    catalog = SqlCatalog(ICEBERG_CATALOG, uri=table.catalog_uri, warehouse=table.warehouse)
    namespace = table.identifier.rsplit(".", 1)[0]
    catalog.create_namespace_if_not_exists(namespace)
    tbl = catalog.create_table_if_not_exists(table.identifier, schema=dataset.schema)
    props = _statement_properties(statement)
    small = {k: v for k, v in props.items() if k != "dpbeam.release"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Delete operation did not match any records" on a first release
        with tbl.transaction() as tx:
            tx.overwrite(dataset.to_table(), snapshot_properties=small)
            tx.set_properties(props)
    tbl = catalog.load_table(table.identifier)
    return {"format": "iceberg", "catalog": redact(table.catalog_uri), "identifier": table.identifier,
            "snapshot_id": tbl.current_snapshot().snapshot_id}


def _register_delta(location: str, dataset: pads.Dataset, statement: dict[str, Any],
                    partition_by: str | None) -> dict[str, Any]:
    from deltalake import CommitProperties, DeltaTable, write_deltalake

    props = _statement_properties(statement)
    reader = pa.RecordBatchReader.from_batches(dataset.schema, dataset.to_batches())
    # The statement travels in the commit of the data (one atomic version) and in the table's properties.
    write_deltalake(location, reader, mode="overwrite", schema_mode="overwrite",
                    partition_by=[partition_by] if partition_by else None,
                    commit_properties=CommitProperties(custom_metadata=props))
    dt = DeltaTable(location)
    dt.alter.set_table_properties(props, raise_if_not_exists=False)
    return {"format": "delta", "location": location, "version": DeltaTable(location).version()}
