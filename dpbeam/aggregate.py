"""What an engine computes over the bounded table: a mergeable summary, built from Arrow record batches.

This is the contract between dpbeam's kernels and the engines (local, Beam, Spark). An engine only decides *where*
these steps run; the steps themselves are here, once:

1. ``prepare(batch)``: a source batch -> a small prepared batch (e.g. the encoded codes). Vectorized. This is what
   travels through the one shuffle by privacy unit, so it is as narrow as possible.
2. bounding (unit-level jobs only): rows are grouped by privacy unit; each unit keeps its k rows of smallest keyed
   score, the score being ``bounding.row_scores(unit_hash, aggregation.row_keys(prepared), key)``. Engines call
   :func:`bound_prepared` on a batch that holds *every* row of the units it contains (any number of whole units).
3. ``partial(prepared_kept)``: a summary of kept rows (e.g. exact count cubes); ``merge`` adds two summaries;
   ``zero()`` is the empty summary. Summaries of disjoint row sets merge to the summary of their union, in any order.

Only the merged summary reaches the driver, so driver memory does not grow with rows. Summaries hold exact counts:
they stay on the trusted side and are noised by the privacy kernels.
"""

from __future__ import annotations

from typing import Generic, Literal, Protocol, Sequence, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dpbeam.bounding import BoundingKey, bound_rows, unit_hashes
from dpbeam.domain import TableDomain
from dpbeam.encode import encode_batch
from dpbeam.errors import SourceError
from dpbeam.marginals import Clique, count_cliques, empty_cubes, merge_cubes

S = TypeVar("S")

# Names of the two unit-hash columns engines add to prepared batches of unit-level jobs.
UNIT_H1, UNIT_H2 = "__unit_h1", "__unit_h2"

NullUnits = Literal["drop", "error"]


class Aggregation(Protocol, Generic[S]):
    columns: list[str]

    def prepare(self, batch: pa.RecordBatch) -> pa.RecordBatch: ...

    def row_keys(self, prepared: pa.RecordBatch) -> np.ndarray: ...

    def partial(self, prepared: pa.RecordBatch) -> S: ...

    def merge(self, a: S, b: S) -> S: ...

    def zero(self) -> S: ...


def codes_of(prepared: pa.RecordBatch, names: Sequence[str]) -> np.ndarray:
    """The code matrix (rows, columns) held by a prepared batch of code columns."""
    if prepared.num_rows == 0:
        return np.zeros((0, len(names)), dtype=np.uint8)
    return np.stack([prepared.column(n).to_numpy(zero_copy_only=False) for n in names], axis=1)


class _EncodedRows:
    """Shared by the aggregations whose prepared batch is the encoded codes, one column per domain column."""

    def __init__(self, domain: TableDomain):
        self.domain = domain
        self.columns = domain.names

    def prepare(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        codes = encode_batch(batch, self.domain)
        return pa.RecordBatch.from_arrays([pa.array(codes[:, j]) for j in range(codes.shape[1])], self.domain.names)

    def row_keys(self, prepared: pa.RecordBatch) -> np.ndarray:
        return codes_of(prepared, self.domain.names)


class MarginalCounts(_EncodedRows):
    """Exact count cubes of ``cliques`` over the bounded table (sensitivity: see :mod:`dpbeam.marginals`)."""

    def __init__(self, domain: TableDomain, cliques: Sequence[Clique]):
        super().__init__(domain)
        self.cliques = list(cliques)

    def partial(self, prepared: pa.RecordBatch) -> dict[Clique, np.ndarray]:
        return count_cliques(self.row_keys(prepared), self.domain, self.cliques)

    def merge(self, a: dict[Clique, np.ndarray], b: dict[Clique, np.ndarray]) -> dict[Clique, np.ndarray]:
        return merge_cubes(a, b)

    def zero(self) -> dict[Clique, np.ndarray]:
        return empty_cubes(self.domain, self.cliques)


class BoundedCodes(_EncodedRows):
    """The bounded table itself, as a code matrix sorted by rows (a canonical multiset). Test-only: it holds rows,
    so it must never feed a release; the engine-equivalence tests compare it across engines."""

    def partial(self, prepared: pa.RecordBatch) -> np.ndarray:
        return self.row_keys(prepared)

    def merge(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        both = np.concatenate([a, b])
        return both[np.lexsort(both.T[::-1])] if len(both) else both

    def zero(self) -> np.ndarray:
        return np.zeros((0, len(self.domain.names)), dtype=self.domain.code_dtype())


def drop_null_units(batch: pa.RecordBatch, unit_column: str, null_units: NullUnits = "drop") -> pa.RecordBatch:
    """``batch`` without the rows whose privacy unit is null (``null_units: drop``), or a :class:`SourceError`
    when it has any (``null_units: error``).

    Privacy argument for ``drop``: a row-wise filter, a stable transformation (stability 1). Whether a row is kept
    depends on that row alone, so two tables that differ by one unit's rows still differ by that unit's rows, and no
    other unit's rows change; every later sensitivity argument is unchanged. Nothing about the dropped rows (not even
    whether there were any) is counted, printed or raised.

    For ``error`` the message names the column and what to change and carries no count. Engines call this in every
    pass through :func:`prepare_with_units`, so a null unit is refused in the job's first pass over the data, before
    any noise is drawn."""
    units = batch.column(unit_column)
    if not units.null_count:
        return batch
    if null_units == "error":
        raise SourceError(
            f"the privacy-unit column '{unit_column}' holds null values and privacy.null_units is error; set "
            "privacy.null_units: drop to leave those rows out, or fill the column before the job"
        )
    return batch.filter(pc.is_valid(units))


def prepare_with_units(
    aggregation: Aggregation,
    batch: pa.RecordBatch,
    unit_column: str | None,
    key: BoundingKey,
    null_units: NullUnits = "drop",
) -> pa.RecordBatch:
    """``aggregation.prepare(batch)``, plus the two unit-hash columns when the job is unit-level. Unit-level jobs
    first apply the ``null_units`` policy to rows whose unit is null (:func:`drop_null_units`), before hashing."""
    if unit_column is None:
        return aggregation.prepare(batch)
    batch = drop_null_units(batch, unit_column, null_units)
    prepared = aggregation.prepare(batch)
    h1, h2 = unit_hashes(batch.column(unit_column), key)
    return prepared.append_column(UNIT_H1, pa.array(h1)).append_column(UNIT_H2, pa.array(h2))


def _large(t: pa.DataType) -> pa.DataType:
    """String and binary types with 64-bit offsets, which hold any number of bytes in one array."""
    if pa.types.is_string(t):
        return pa.large_string()
    if pa.types.is_binary(t):
        return pa.large_binary()
    return t


def one_batch(parts: Sequence[pa.RecordBatch], schema: pa.Schema | None = None) -> pa.RecordBatch:
    """Every row of ``parts`` in one record batch, in order. String and binary columns become their large types.

    The engines use this where a shuffle partition's pieces are put together before bounding. It never drops a row:
    ``Table.combine_chunks().to_batches()[0]`` kept only the first chunk when a string column passed Arrow's 2 GiB
    offset limit (``combine_chunks`` then splits the column); here each column is concatenated on its own, with
    64-bit offsets, and the row count in is checked against the row count out."""
    if schema is None:
        if not parts:
            raise ValueError("one_batch needs a schema when there are no parts")
        schema = parts[0].schema
    wide = pa.schema([f.with_type(_large(f.type)) for f in schema])
    rows = sum(p.num_rows for p in parts)
    arrays = []
    for field in wide:
        chunks = [c if c.type == field.type else c.cast(field.type)
                  for c in (p.column(field.name) for p in parts if p.num_rows)]
        arrays.append(pa.concat_arrays(chunks) if chunks else pa.array([], type=field.type))
    out = pa.RecordBatch.from_arrays(arrays, schema=wide)
    if out.num_rows != rows:  # cannot happen with 64-bit offsets; never let a short batch through
        raise RuntimeError("concatenating the pieces of a shuffle partition lost rows; please report this bug")
    return out


def bound_prepared(aggregation: Aggregation, prepared: pa.RecordBatch, k: int, key: BoundingKey) -> pa.RecordBatch:
    """Keep at most k rows of each unit in a prepared batch that holds every row of the units it contains.

    The kept rows depend only on each unit's own rows and the key (see :mod:`dpbeam.bounding`), so any split of the
    units into batches gives the same result. The unit-hash columns stay, for aggregations that count units."""
    h1 = prepared.column(UNIT_H1).to_numpy()
    h2 = prepared.column(UNIT_H2).to_numpy()
    keep = bound_rows(h1, h2, aggregation.row_keys(prepared), k, key)
    return prepared.take(pa.array(np.sort(keep)))


def partition_of(prepared: pa.RecordBatch, partitions: int) -> np.ndarray:
    """The shuffle partition of each row of a prepared unit-level batch: a function of the unit hash only."""
    return (prepared.column(UNIT_H1).to_numpy() % np.uint64(partitions)).astype(np.int64)


def summarize(aggregation: Aggregation[S], prepared_batches: Sequence[pa.RecordBatch]) -> S:
    """Merge the partials of already-bounded prepared batches."""
    out = aggregation.zero()
    for b in prepared_batches:
        out = aggregation.merge(out, aggregation.partial(b))
    return out


__all__ = [
    "Aggregation",
    "BoundedCodes",
    "MarginalCounts",
    "UNIT_H1",
    "UNIT_H2",
    "bound_prepared",
    "codes_of",
    "drop_null_units",
    "one_batch",
    "partition_of",
    "prepare_with_units",
    "summarize",
]
