"""Reading the sensitive source as a stream of Arrow record batches (trusted side only).

A source is a Parquet file, a directory of Parquet files (subdirectories included; Hive-style key=value directory
names are not read as columns), a glob, or CSV, on any
fsspec filesystem. Opening a source reads metadata only; it refuses, with the file named, a directory holding files
that are not Parquet, files whose schemas disagree on a column the job reads, and a source with no rows.
Files and directories whose names start with ``_`` or ``.`` (``_SUCCESS``, ``.crc``) are skipped, as Spark does.

A file that cannot be read is a :class:`SourceError` naming the file (and, for a CSV value that does not parse as
its column's type, the column), never the value, the row number or Arrow's message, which quote the data.
"""

from __future__ import annotations

import csv
import io
import re
from functools import cached_property
from typing import Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyarrow.fs import FSSpecHandler, PyFileSystem

from dpbeam import lake
from dpbeam.domain import arrow_type_to_str
from dpbeam.errors import SourceError
from dpbeam.spec import SourceSpec

DEFAULT_BATCH_ROWS = 1 << 16
Split = tuple  # (file path, Parquet row group index or None for the whole file)
_PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
_CSV_COLUMN = re.compile(r"In CSV column #(\d+)")


class Source:
    """An opened source: its files, its schema, and batches of the columns a job reads."""

    def __init__(self, spec: SourceSpec, column_types: Mapping[str, pa.DataType] | None = None):
        """``column_types``: the Arrow type of each column a CSV source is read as (from the spec, see
        :func:`dpbeam.domain.spec_arrow_type`); columns not named are read as strings. Unused for Parquet, whose
        schema is the files' metadata."""
        self.spec = spec
        self.column_types = dict(column_types or {})
        self.format = spec.resolved_format
        self.fs, path = lake.filesystem(spec.uri)
        self.files = self._list(path)

    def _list(self, path: str) -> list[str]:
        uri = self.spec.uri
        if any(ch in path for ch in "*?["):
            files = sorted(p for p in self.fs.glob(path) if self.fs.isfile(p))
        elif not self.fs.exists(path):
            raise SourceError(f"source {uri} does not exist; check source.uri")
        elif self.fs.isdir(path):
            files = sorted(
                p for p in self.fs.find(path) if not any(seg.startswith(("_", ".")) for seg in p[len(path):].split("/"))
            )
            if self.format == "parquet":
                odd = [p for p in files if not p.lower().endswith(_PARQUET_SUFFIXES)]
                if odd:
                    raise SourceError(
                        f"source directory {uri} holds {len(odd)} file(s) that are not Parquet, e.g. {odd[0]}; move "
                        "them out, or point source.uri at a glob such as DIR/*.parquet"
                    )
        else:
            files = [path]
        if not files:
            raise SourceError(f"source {uri} holds no files; check source.uri")
        return files

    @cached_property
    def _arrow_fs(self) -> PyFileSystem:
        return PyFileSystem(FSSpecHandler(self.fs))

    def _file_schema(self, path: str) -> pa.Schema:
        try:
            if self.format == "parquet":
                with self.fs.open(path, "rb") as f:
                    return pq.read_schema(f)
            return self._csv_schema(path)
        except (pa.ArrowInvalid, OSError, UnicodeDecodeError, csv.Error):
            what = "its footer (is it Parquet?)" if self.format == "parquet" else "a header line naming every column"
            raise SourceError(f"cannot read the schema of {path} as {self.format}: it needs {what}") from None

    def _csv_schema(self, path: str) -> pa.Schema:
        """A CSV file's schema from its header line and the spec's types: never inferred from the values (one
        added row must not change a column's type). Every CSV field is nullable: an empty cell is a null."""
        header = self._csv_header(path)
        if not header or any(not name for name in header):
            raise pa.ArrowInvalid("the first line must name every column")
        return pa.schema([pa.field(n, self.column_types.get(n, pa.string()), nullable=True) for n in header])

    @cached_property
    def schema(self) -> pa.Schema:
        return self._file_schema(self.files[0])

    def check(self, columns: Sequence[str]) -> None:
        """Refuse differing schemas (on the columns read) and an empty source. Reads metadata only (Parquet)."""
        first = self.schema
        for path in self.files[1:]:
            other = self._file_schema(path)
            for c in columns:
                if c in first.names and (c not in other.names or other.field(c).type != first.field(c).type):
                    got = arrow_type_to_str(other.field(c).type) if c in other.names else "missing"
                    raise SourceError(
                        f"source files disagree on column '{c}': {self.files[0]} has "
                        f"{arrow_type_to_str(first.field(c).type)}, {path} has {got}. Rewrite the odd files with one schema"
                    )
        if self.num_rows_upper_bound() == 0:
            raise SourceError(f"source {self.spec.uri} has no rows; a synthetic table needs a non-empty source")

    def num_rows_upper_bound(self) -> int:
        """Rows in the source (Parquet: from footers); for CSV, 0 or 1 depending on whether any file has a line
        after its header (no value is parsed here: parse errors belong to the job's first pass)."""
        if self.format == "parquet":
            total = 0
            for path in self.files:
                with self.fs.open(path, "rb") as f:
                    total += pq.ParquetFile(f).metadata.num_rows
            return total
        for path in self.files:
            with self.fs.open(path, "rt", compression="infer", encoding="utf-8", newline="") as f:
                f.readline()
                if any(line.strip() for line in f):
                    return 1
        return 0

    def __getstate__(self) -> dict:
        """Sources travel to Beam and Spark workers; the cached pyarrow filesystem does not pickle and is rebuilt."""
        state = dict(self.__dict__)
        state.pop("_arrow_fs", None)
        return state

    def splits(self) -> list[Split]:
        """Independent pieces of the source, for engines that read in parallel: one per Parquet row group (read
        from the footers), one per CSV file."""
        if self.format != "parquet":
            return [(path, None) for path in self.files]
        out: list[Split] = []
        for path in self.files:
            with self.fs.open(path, "rb") as f:
                out += [(path, i) for i in range(pq.ParquetFile(f).num_row_groups)]
        return out

    def split_batches(
        self, split: Split, columns: Sequence[str], batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """Record batches of ``columns`` in one split (a row group, or all row groups of a file when None). A read or
        parse error is a :class:`SourceError` that names the file (and the column, when Arrow says which) and
        carries nothing from the data; Arrow's own error stays chained to it, for ``--debug`` on the trusted side."""
        try:
            yield from self._split_batches(split, columns, batch_rows)
        except SourceError:
            raise
        except (pa.ArrowException, OSError, ValueError) as err:
            raise self._read_error(split[0], err) from err

    def _split_batches(self, split: Split, columns: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        path, row_group = split
        if self.format == "parquet":
            with self.fs.open(path, "rb") as f:
                groups = None if row_group is None else [row_group]
                reader = pq.ParquetFile(f)
                for batch in reader.iter_batches(batch_size=batch_rows, columns=list(columns), row_groups=groups):
                    if batch.num_rows:
                        yield batch
            return
        # Types from the spec; an empty unquoted cell is null in every column (strings included).
        convert = pacsv.ConvertOptions(column_types=self.schema, strings_can_be_null=True)
        fmt = ds.CsvFileFormat(convert_options=convert)
        scanner = ds.dataset([path], schema=self.schema, format=fmt, filesystem=self._arrow_fs).scanner(
            columns=list(columns), batch_size=batch_rows, batch_readahead=2
        )
        for batch in scanner.to_batches():
            if batch.num_rows:
                yield batch

    def _read_error(self, path: str, err: BaseException) -> SourceError:
        """A one-line error for a file that failed to read, from Arrow's error without quoting it: Arrow's message
        holds the offending value and its row number. Only the CSV column index is taken from it, as a name."""
        if self.format == "csv":
            found = _CSV_COLUMN.search(str(err))
            try:
                header = self._csv_header(path) if found else []
            except (OSError, UnicodeDecodeError, csv.Error):
                header = []
            if found and int(found.group(1)) < len(header):
                name = header[int(found.group(1))]
                t = self.column_types.get(name)
                hint = (f'; times written with a UTC offset ("+00:00", "Z") need columns.{name}.arrow_type: '
                        '"timestamp[us, tz=UTC]"' if t is not None and pa.types.is_timestamp(t) and not t.tz else "")
                return SourceError(
                    f"cannot read {path}: a value in column '{name}' does not parse as the column's type "
                    f"({arrow_type_to_str(t) if t is not None else 'string'}). Fix the file, or declare "
                    f"columns.{name} with the kind (and arrow_type) its values have{hint}"
                )
            return SourceError(
                f"cannot read {path} as CSV: a row does not parse (quoting, field count or encoding). Fix the file; "
                "rerun with --debug on the trusted side to see Arrow's message"
            )
        return SourceError(
            f"cannot read {path} as Parquet: the file is damaged or not Parquet. Replace it; rerun with --debug on "
            "the trusted side to see Arrow's message"
        )

    def _csv_header(self, path: str) -> list[str]:
        """The column names on the first line of a CSV file (public: the schema)."""
        with self.fs.open(path, "rb", compression="infer") as f:
            first = f.readline().decode("utf-8-sig")
        return next(csv.reader(io.StringIO(first)), [])

    def batches(self, columns: Sequence[str], batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """Record batches of ``columns`` (each at most ``batch_rows`` rows), file after file.

        Parquet is streamed a row group at a time, so memory is bounded by one row group, not by the file or table
        (a dataset scanner with read-ahead held ~4x more on a 10M-row table)."""
        for path in self.files:
            yield from self.split_batches((path, None), columns, batch_rows)


def open_source(spec: SourceSpec, column_types: Mapping[str, pa.DataType] | None = None) -> Source:
    return Source(spec, column_types)
