"""The lake: URIs (local, gs://, s3://, anything fsspec knows), atomic directory commits, JSON files.

A directory dpbeam writes becomes visible all at once: it is written under a hidden temporary sibling, renamed into
place, and marked complete by ``_SUCCESS``, written last. Readers (and dpbeam itself) treat a directory without
``_SUCCESS`` as absent. On object stores, where a rename is a copy, ``_SUCCESS`` is the commit point.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Any, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from dpbeam.errors import OutputExistsError

SUCCESS = "_SUCCESS"


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


class PartWriter:
    """Writes a stream of Arrow tables as Parquet part files of about ``rows_per_part`` rows each."""

    def __init__(self, dir_uri: str, schema: pa.Schema, rows_per_part: int = 5_000_000):
        self.fs, self.path = filesystem(dir_uri)
        self.schema = schema
        self.rows_per_part = rows_per_part
        self.parts = 0
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._file = None
        self._in_part = 0

    def _open(self) -> None:
        self._file = self.fs.open(f"{self.path}/part-{self.parts:05d}.parquet", "wb")
        self._writer = pq.ParquetWriter(self._file, self.schema, compression="zstd")
        self.parts += 1
        self._in_part = 0

    def write(self, table: pa.Table) -> None:
        if self._writer is None or self._in_part >= self.rows_per_part:
            self.close()
            self._open()
        self._writer.write_table(table.cast(self.schema))
        self._in_part += table.num_rows
        self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._file.close()
            self._writer = self._file = None
