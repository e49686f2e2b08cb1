"""Arrow batch -> integer codes, and codes -> Arrow columns of the source's types.

Encoding is vectorized (pyarrow.compute and numpy, no per-row Python) and is the same function on every engine.
Rules: values outside public bounds are clamped into the first/last bin; categorical values not in the public list
map to the ``other`` code; nulls map to the null code of a nullable column, and are an error in a column declared
``nullable: false`` (the error is raised on the trusted side, before anything is measured or written).

Decoding is post-processing: a code becomes a value drawn uniformly within its bin (integers, floats, datetimes; a
bin that discovery found to hold a point mass becomes its one roundest value), the listed value (categorical), or
null. It needs a seeded numpy generator for that non-privacy randomness.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dpbeam.domain import (
    BinnedDomain,
    BooleanDomain,
    CategoricalDomain,
    ColumnDomain,
    TableDomain,
    arrow_type_from_str,
    other_value,
)
from dpbeam.errors import SourceError

def _plain(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr


def _numeric(arr: pa.Array, fill: float | int) -> np.ndarray:
    return arr.fill_null(fill).to_numpy(zero_copy_only=False)


def _datetime_us(arr: pa.Array) -> pa.Array:
    """Any timestamp/date array as int64 microseconds since the epoch (UTC)."""
    t = arr.type
    target = pa.timestamp("us") if pa.types.is_date(t) else pa.timestamp("us", tz=t.tz)
    return arr.cast(target, safe=False).cast(pa.int64())


def encode_column(arr: pa.Array | pa.ChunkedArray, col: ColumnDomain, dtype: np.dtype = np.dtype(np.int32)) -> np.ndarray:
    """Codes of one column; see the module doc for the rules."""
    arr = _plain(arr)
    nulls = arr.null_count > 0
    if nulls and not col.nullable:
        raise SourceError(
            f"column '{col.name}' holds nulls but the spec says nullable: false; set columns.{col.name}.nullable: true"
        )
    if isinstance(col, CategoricalDomain):
        value_set = pa.array(list(col.values)).cast(arr.type)
        idx = pc.index_in(arr, value_set=value_set)
        codes = idx.fill_null(col.other_code).to_numpy(zero_copy_only=False)
    elif isinstance(col, BooleanDomain):
        codes = _numeric(arr, False).astype(np.int64)
    elif isinstance(col, BinnedDomain):
        edges = np.asarray(col.edges)
        if col.binned_kind == "datetime":
            x = _numeric(_datetime_us(arr), 0)
        elif col.binned_kind == "integer":
            x = _numeric(arr, 0).astype(np.int64, copy=False)
        else:
            x = _numeric(arr.cast(pa.float64()), 0.0)
        x = np.clip(x, col.lower, col.upper)
        codes = np.searchsorted(edges, x, side="right") - 1
        np.clip(codes, 0, col.n_values - 1, out=codes)
    else:  # pragma: no cover
        raise TypeError(f"no encoder for {type(col).__name__}")
    codes = codes.astype(dtype, copy=False)
    if nulls:
        codes = np.where(arr.is_null().to_numpy(zero_copy_only=False), col.null_code, codes).astype(dtype)
    return codes


def encode_batch(batch: pa.RecordBatch | pa.Table, domain: TableDomain) -> np.ndarray:
    """A code matrix of shape (rows, columns) in the domain's column order, dtype ``domain.code_dtype()``."""
    dtype = domain.code_dtype()
    out = np.empty((batch.num_rows, len(domain.columns)), dtype=dtype)
    for j, col in enumerate(domain.columns):
        out[:, j] = encode_column(batch.column(col.name), col, dtype)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Decoding (post-processing)


def _within_bins(col: BinnedDomain, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    edges = np.asarray(col.edges)
    c = np.minimum(codes, col.n_values - 1)
    lo, hi = edges[c], edges[c + 1]
    if col.binned_kind == "integer":
        return rng.integers(lo, hi)  # hi exclusive: bin i holds [edges[i], edges[i+1] - 1]
    x = lo + rng.random(len(c)) * (hi - lo)
    for p in col.points:  # a point mass decodes to its one value
        value = col.point_value(p)
        x[c == p] = int(round(value)) if col.binned_kind == "datetime" else value
    return x


def decode_column(codes: np.ndarray, col: ColumnDomain, rng: np.random.Generator) -> pa.Array:
    """Values of one column from its codes, in the source's Arrow type."""
    codes = np.asarray(codes, dtype=np.int64)
    target = arrow_type_from_str(col.arrow_type)
    null_mask = codes == col.null_code if col.nullable else None
    if isinstance(col, CategoricalDomain):
        table = pa.array(list(col.values) + [other_value(col.values, target, col.other_label)], type=target)
        safe = np.minimum(codes, col.n_values - 1)
        out = table.take(pa.array(safe))
    elif isinstance(col, BooleanDomain):
        out = pa.array(np.minimum(codes, 1).astype(bool))
    elif isinstance(col, BinnedDomain):
        x = _within_bins(col, codes, rng)
        if col.binned_kind == "datetime":
            us = pa.array(np.asarray(x, dtype=np.int64)).cast(pa.timestamp("us"))
            if pa.types.is_timestamp(target):
                out = us.cast(pa.timestamp("us", tz=target.tz)).cast(target, safe=False)
            else:
                out = us.cast(target, safe=False)
        elif col.binned_kind == "integer":
            out = pa.array(x).cast(target, safe=False)
        else:
            x = np.asarray(x, dtype=np.float64)
            if pa.types.is_decimal(target):  # within the type's precision (an unsafe cast would wrap to garbage)
                most = 10.0 ** (target.precision - target.scale) - 10.0 ** -target.scale
                x = np.clip(x, -most, most)
            out = pa.array(x).cast(target, safe=False)
    else:  # pragma: no cover
        raise TypeError(f"no decoder for {type(col).__name__}")
    if null_mask is not None and null_mask.any():
        out = pc.if_else(pa.array(null_mask), pa.nulls(len(out), type=out.type), out)
    return out.cast(target) if out.type != target else out


def decode_codes(codes: np.ndarray, domain: TableDomain, rng: np.random.Generator) -> pa.Table:
    """A table with the domain's columns and Arrow types from a code matrix (rows, columns)."""
    arrays = [decode_column(codes[:, j], col, rng) for j, col in enumerate(domain.columns)]
    return pa.Table.from_arrays(arrays, names=domain.names)
