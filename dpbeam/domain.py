"""Column domains: how each column's values map to a small set of integer codes, and back.

A domain is public information: it comes from the spec (or from a DP discovery step), never from looking at the data.
Each column's codes are ``0..size-1``:

- categorical: one code per listed value, then one ``other`` code for every unlisted value;
- integer / float / datetime: one code per bin between public edges; values outside the bounds are clamped;
- boolean: false = 0, true = 1;
- every nullable column has one more code, the last, for null.

The Arrow type of the source column is recorded so that decoding writes the same type back.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from dpbeam.errors import SpecError
from dpbeam.spec import (
    BooleanColumn,
    CategoricalColumn,
    ColumnSpec,
    DatetimeColumn,
    FloatColumn,
    IntegerColumn,
)

MAX_DEFAULT_INTEGER_VALUES = 128
DEFAULT_BINS = 32
MAX_DATETIME_BINS = 4096

# ----------------------------------------------------------------------------------------------------------------------
# Arrow types <-> readable strings


def arrow_type_to_str(t: pa.DataType) -> str:
    """A readable, parseable name for an Arrow type (dictionary columns are recorded by their value type)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_timestamp(t):
        return f"timestamp[{t.unit}, tz={t.tz}]" if t.tz else f"timestamp[{t.unit}]"
    if pa.types.is_date32(t):
        return "date32"
    if pa.types.is_date64(t):
        return "date64"
    return str(t)


_DECIMAL = re.compile(r"(decimal128|decimal256)\((\d+), (-?\d+)\)")


def arrow_type_from_str(s: str) -> pa.DataType:
    """The Arrow type named by :func:`arrow_type_to_str` (timestamps with their zone, decimals with their precision
    and scale, and every type pyarrow has an alias for)."""
    if s.startswith("timestamp["):
        inner = s[len("timestamp[") : -1]
        unit, _, tz = inner.partition(", tz=")
        return pa.timestamp(unit, tz=tz or None)
    decimal = _DECIMAL.fullmatch(s)
    if decimal:
        make = pa.decimal128 if decimal.group(1) == "decimal128" else pa.decimal256
        return make(int(decimal.group(2)), int(decimal.group(3)))
    return pa.type_for_alias(s)


# ----------------------------------------------------------------------------------------------------------------------
# Column domains


@dataclass(frozen=True)
class ColumnDomain:
    """Base of all column domains. ``n_values`` counts the non-null codes; ``size`` adds the null code."""

    name: str
    arrow_type: str
    nullable: bool

    kind = "abstract"

    @property
    def n_values(self) -> int:
        raise NotImplementedError

    @property
    def size(self) -> int:
        return self.n_values + (1 if self.nullable else 0)

    @property
    def null_code(self) -> int | None:
        return self.n_values if self.nullable else None

    def labels(self) -> list[str]:
        """One readable label per code, for reports and the measurements artifact."""
        return self._value_labels() + (["<null>"] if self.nullable else [])

    def _value_labels(self) -> list[str]:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "arrow_type": self.arrow_type, "nullable": self.nullable}


@dataclass(frozen=True)
class CategoricalDomain(ColumnDomain):
    values: tuple = ()
    other_label: Any = None  # how the "other" code is written out; see other_value

    kind = "categorical"

    @property
    def n_values(self) -> int:
        return len(self.values) + 1

    @property
    def other_code(self) -> int:
        return len(self.values)

    def _value_labels(self) -> list[str]:
        return [str(v) for v in self.values] + ["<other>"]

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "values": list(self.values), "other_label": self.other_label}


@dataclass(frozen=True)
class BinnedDomain(ColumnDomain):
    """Integer, float or datetime values in bins between ``edges``.

    integer: bin i holds [edges[i], edges[i+1] - 1]; float: [edges[i], edges[i+1]) with the last bin closed;
    datetime: edges are microseconds since the Unix epoch (UTC), bins as for float. ``points`` lists the codes of
    bins that DP discovery found to hold a point mass (zero rainfall, a visibility capped at 10): they decode to
    one value, the roundest in the bin (:func:`roundest`), instead of a value drawn uniformly within it.
    """

    edges: tuple = ()
    binned_kind: str = "integer"
    points: tuple = ()

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.binned_kind

    @property
    def n_values(self) -> int:
        return len(self.edges) - 1

    @property
    def lower(self) -> float:
        return self.edges[0]

    @property
    def upper(self) -> float:
        """The largest value the domain holds (values above are clamped to it)."""
        return self.edges[-1] - 1 if self.binned_kind == "integer" else self.edges[-1]

    def _value_labels(self) -> list[str]:
        e = self.edges
        if self.binned_kind == "integer":
            return [str(e[i]) if e[i + 1] - e[i] == 1 else f"[{e[i]}, {e[i + 1] - 1}]" for i in range(len(e) - 1)]
        if self.binned_kind == "datetime":
            iso = [_dt.datetime.fromtimestamp(x / 1e6, _dt.timezone.utc).isoformat() for x in e]
            return [f"[{iso[i]}, {iso[i + 1]})" for i in range(len(e) - 1)]
        return [f"[{e[i]:g}, {e[i + 1]:g})" for i in range(len(e) - 1)]

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "edges": list(self.edges), **({"points": list(self.points)} if self.points else {})}

    def point_value(self, code: int) -> float:
        """The value a point bin decodes to: the roundest number in it (the last bin is closed)."""
        return roundest(self.edges[code], self.edges[code + 1], closed=code == self.n_values - 1)


def roundest(lo: float, hi: float, closed: bool = False) -> float:
    """The number in [lo, hi) ([lo, hi] if ``closed``) with the fewest significant digits: the largest power of ten
    that has a multiple in the interval, and its multiple nearest lo. A function of the edges alone (public)."""
    if hi < lo or (hi == lo and not closed):
        return float(lo)
    top = math.floor(math.log10(max(abs(lo), abs(hi), 1e-300))) + 1
    for e in range(top, top - 18, -1):
        step = 10.0**e
        x = math.ceil(lo / step) * step
        if x < hi or (closed and x <= hi):
            return float(x if x != 0 else 0.0)
    return float(lo)


@dataclass(frozen=True)
class BooleanDomain(ColumnDomain):
    kind = "boolean"

    @property
    def n_values(self) -> int:
        return 2

    def _value_labels(self) -> list[str]:
        return ["false", "true"]


def column_domain_from_json(d: dict[str, Any]) -> ColumnDomain:
    base = {"name": d["name"], "arrow_type": d["arrow_type"], "nullable": d["nullable"]}
    if d["kind"] == "categorical":
        return CategoricalDomain(**base, values=tuple(d["values"]), other_label=d.get("other_label"))
    if d["kind"] == "boolean":
        return BooleanDomain(**base)
    if d["kind"] in ("integer", "float", "datetime"):
        return BinnedDomain(**base, edges=tuple(d["edges"]), binned_kind=d["kind"], points=tuple(d.get("points", ())))
    raise ValueError(f"unknown column kind {d['kind']!r} in domain file")


@dataclass(frozen=True)
class TableDomain:
    """The ordered column domains of one table; the order is the column order of every code matrix."""

    columns: tuple[ColumnDomain, ...]
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({c.name: i for i, c in enumerate(self.columns)})

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def sizes(self) -> list[int]:
        return [c.size for c in self.columns]

    def __getitem__(self, name: str) -> ColumnDomain:
        return self.columns[self._index[name]]

    def index(self, name: str) -> int:
        return self._index[name]

    def code_dtype(self) -> np.dtype:
        """The smallest unsigned dtype that holds every column's codes."""
        return np.dtype(np.min_scalar_type(max(self.sizes) - 1))

    def to_json(self) -> list[dict[str, Any]]:
        return [c.to_json() for c in self.columns]

    @classmethod
    def from_json(cls, items: Sequence[dict[str, Any]]) -> "TableDomain":
        return cls(tuple(column_domain_from_json(d) for d in items))


# ----------------------------------------------------------------------------------------------------------------------
# Building domains from the spec and the source's schema (public information only)


_KIND_RULES = {
    "categorical": (
        lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t) or pa.types.is_boolean(t),
        "categorical columns must be strings, integers or booleans",
    ),
    "boolean": (pa.types.is_boolean, "use kind: categorical or integer for it"),
    "integer": (pa.types.is_integer, "use kind: float for real numbers"),
    "float": (lambda t: pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t),
              "float columns must be numeric"),
    "datetime": (lambda t: pa.types.is_timestamp(t) or pa.types.is_date(t),
                 "datetime columns must be timestamps or dates: write the column as one (pandas: pd.to_datetime "
                 "before to_parquet; SQL: CAST(column AS TIMESTAMP)), or use kind: categorical for it"),
}


def check_column_kind(name: str, spec: ColumnSpec, arrow_type: pa.DataType) -> pa.DataType:
    """The column's value type, after checking that the spec's kind can hold it."""
    t = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    ok, hint = _KIND_RULES[spec.kind]
    if not ok(t):
        raise SpecError(
            f"column '{name}' is {arrow_type_to_str(t)} in the source but the spec says kind: {spec.kind}; {hint}"
        )
    try:  # the output is written in the source's type: check here, before any row is read, that it can be named
        arrow_type_from_str(arrow_type_to_str(t))
    except (ValueError, TypeError, KeyError):
        raise SpecError(f"column '{name}' is {t} in the source, a type dpbeam cannot write back; cast it upstream to "
                        "a plain integer, float, string, timestamp or date type") from None
    return t


def is_open(spec: ColumnSpec) -> bool:
    """Whether the spec leaves the column's domain to DP discovery (no values, or no bounds)."""
    if isinstance(spec, CategoricalColumn):
        return spec.values is None
    return not isinstance(spec, BooleanColumn) and spec.bounds is None


_KIND_ARROW_TYPES = {
    "categorical": pa.string(),
    "integer": pa.int64(),
    "float": pa.float64(),
    "datetime": pa.timestamp("us"),
    "boolean": pa.bool_(),
}


def spec_arrow_type(spec: ColumnSpec) -> pa.DataType:
    """The Arrow type a column is read as from a source without a typed schema (CSV): the spec's ``arrow_type``, or
    the kind's default. Never inferred from values."""
    return arrow_type_from_str(spec.arrow_type) if spec.arrow_type else _KIND_ARROW_TYPES[spec.kind]


def is_nullable(spec: ColumnSpec, field: pa.Field) -> bool:
    """The spec's ``nullable``, or by default the schema's nullability of the field (public metadata)."""
    return field.nullable if spec.nullable is None else spec.nullable


def other_value(values: Sequence, arrow_type: pa.DataType, other_label: Any = None) -> Any:
    """How the "other" code of a categorical column is written out: a value every output of that Arrow type can hold.

    A function of public facts only (the listed or DP-discovered values and the type), so it is post-processing.
    Strings: ``other_label`` or ``"__other__"``. Integers: ``other_label``, else -1 when it is not a listed value and
    the type holds it, else the smallest integer above the listed ones that the type holds (never a listed value while
    one is free). Booleans: the one of false/true that is not listed; when both are, the code cannot arise from data
    and is written as false."""
    t = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    if other_label is not None:
        return other_label
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "__other__"
    if pa.types.is_boolean(t):
        missing = [b for b in (False, True) if b not in set(values)]
        return missing[0] if missing else False
    if pa.types.is_integer(t):
        taken = {int(v) for v in values}
        lo = -1 if pa.types.is_signed_integer(t) else 0
        if lo not in taken:
            return lo
        top = np.iinfo(t.to_pandas_dtype()).max
        candidate = max(taken) + 1
        if candidate <= top:
            return candidate
        return next(v for v in range(lo, top) if v not in taken)
    return None


def build_column_domain(name: str, spec: ColumnSpec, field: pa.Field) -> ColumnDomain:
    """Turn one column's spec into its domain, checking the kind against the source field's Arrow type."""
    check_arrow_type(name, spec, field)
    t = check_column_kind(name, spec, field.type)
    base = {"name": name, "arrow_type": arrow_type_to_str(t), "nullable": is_nullable(spec, field)}
    if isinstance(spec, CategoricalColumn):
        if spec.values is None:
            raise SpecError(
                f"column '{name}' has no public values: list them under columns.{name}.values, or set "
                "privacy.discovery_fraction (e.g. 0.1) to discover them with DP"
            )
        try:
            pa.array(spec.values).cast(t)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise SpecError(
                f"columns.{name}.values {spec.values[:5]}... cannot be read as {arrow_type_to_str(t)}, the column's "
                "type in the source; write the values as that type"
            ) from None
        return categorical_domain(name, spec, field, spec.values)
    if isinstance(spec, BooleanColumn):
        return BooleanDomain(**base)
    if isinstance(spec, IntegerColumn):
        return BinnedDomain(**base, edges=tuple(integer_edges(name, spec)), binned_kind="integer")
    if isinstance(spec, FloatColumn):
        return BinnedDomain(**base, edges=tuple(float_edges(name, spec)), binned_kind="float")
    if isinstance(spec, DatetimeColumn):
        return BinnedDomain(**base, edges=tuple(datetime_edges(name, spec)), binned_kind="datetime")
    raise SpecError(f"column '{name}': unsupported kind {spec.kind}")  # pragma: no cover


def categorical_domain(name: str, spec: CategoricalColumn, field: pa.Field, values: Sequence) -> CategoricalDomain:
    """A categorical domain over ``values`` (public or DP-discovered); its "other" label is checked to be writable
    as the column's type here, before any data is read (see :func:`other_value`)."""
    t = check_column_kind(name, spec, field.type)
    other = other_value(values, t, spec.other_label)
    try:
        pa.array([other]).cast(t)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        raise SpecError(
            f"columns.{name}.other_label {spec.other_label!r} cannot be written as {arrow_type_to_str(t)}, the "
            "column's type; give a label of that type"
        ) from None
    return CategoricalDomain(name, arrow_type_to_str(t), is_nullable(spec, field), values=tuple(values),
                             other_label=other)


def _missing_bounds(name: str) -> SpecError:
    return SpecError(
        f"column '{name}' has no public bounds: set columns.{name}.bounds to [lo, hi], or set "
        "privacy.discovery_fraction (e.g. 0.1) to discover them with DP"
    )


def integer_edges(name: str, spec: IntegerColumn) -> list[int]:
    if spec.bounds is None:
        raise _missing_bounds(name)
    lo, hi = spec.bounds
    if isinstance(spec.bins, list):
        if spec.bins[0] != lo or spec.bins[-1] != hi + 1:
            raise SpecError(f"columns.{name}.bins must start at lo={lo} and end at hi+1={hi + 1}")
        return list(spec.bins)
    n_values = hi - lo + 1
    n_bins = spec.bins or (n_values if n_values <= MAX_DEFAULT_INTEGER_VALUES else DEFAULT_BINS)
    if n_bins > n_values:
        raise SpecError(f"columns.{name}.bins = {n_bins} exceeds the {n_values} integers in bounds; use <= {n_values}")
    width = math.ceil(n_values / n_bins)
    edges = list(range(lo, hi + 1, width)) + [hi + 1]
    return edges


def float_edges(name: str, spec: FloatColumn) -> list[float]:
    if spec.bounds is None:
        raise _missing_bounds(name)
    lo, hi = spec.bounds
    if isinstance(spec.bins, list):
        if spec.bins[0] != lo or spec.bins[-1] != hi:
            raise SpecError(f"columns.{name}.bins must start at lo={lo} and end at hi={hi}")
        return [float(x) for x in spec.bins]
    return np.linspace(lo, hi, (spec.bins or DEFAULT_BINS) + 1).tolist()


_NP_UNIT = {"second": "s", "minute": "m", "hour": "h", "day": "D", "week": "W", "month": "M", "year": "Y"}


def _to_us(t: _dt.datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    delta = t - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def datetime_edges(name: str, spec: DatetimeColumn) -> list[int]:
    if spec.bounds is None:
        raise _missing_bounds(name)
    start, end = (_to_us(t) for t in spec.bounds)
    if spec.bins is not None:
        return np.linspace(start, end, spec.bins + 1).round().astype(np.int64).tolist()
    unit = _NP_UNIT[spec.granularity or "day"]
    if unit == "W":
        lo = np.datetime64(start, "us").astype("datetime64[D]")
        lo = lo - ((lo.astype(np.int64) - 4) % 7)  # weeks start on Monday (1970-01-01 was a Thursday)
        steps = np.arange(lo, np.datetime64(end, "us").astype("datetime64[D]") + 7, 7)
    else:
        lo = np.datetime64(start, "us").astype(f"datetime64[{unit}]")
        hi = np.datetime64(end, "us").astype(f"datetime64[{unit}]") + 1
        steps = np.arange(lo, hi + 1)
    edges = steps.astype("datetime64[us]").astype(np.int64)
    edges = np.unique(np.clip(edges, start, end))
    if len(edges) < 2:
        edges = np.array([start, end])
    if len(edges) - 1 > MAX_DATETIME_BINS:
        raise SpecError(
            f"column '{name}': granularity {spec.granularity or 'day'} gives {len(edges) - 1} bins over the bounds "
            f"(more than {MAX_DATETIME_BINS}); choose a coarser granularity or set bins"
        )
    return edges.tolist()


def check_arrow_type(name: str, spec: ColumnSpec, field: pa.Field) -> None:
    """A column's ``arrow_type``, when given, must be the source's (a CSV source is read with it, so it always is)."""
    if spec.arrow_type is not None and arrow_type_from_str(spec.arrow_type) != field.type:
        raise SpecError(
            f"columns.{name}.arrow_type is {spec.arrow_type} but the source's schema says "
            f"{arrow_type_to_str(field.type)}; remove arrow_type (it is for CSV sources) or make it match"
        )


def check_columns(specs: dict[str, ColumnSpec], schema: pa.Schema) -> None:
    """Every spec column exists in the source and its kind fits the column's type."""
    missing = [n for n in specs if n not in schema.names]
    if missing:
        raise SpecError(
            f"column(s) {missing} are in the spec but not in the source; the source has {schema.names}. "
            "Fix the names under columns or the source uri"
        )
    for n, s in specs.items():
        check_arrow_type(n, s, schema.field(n))
        check_column_kind(n, s, schema.field(n).type)


def build_table_domain(specs: dict[str, ColumnSpec], schema: pa.Schema) -> TableDomain:
    """Build the domain of every spec column from the spec and the source's schema; unknown columns are errors."""
    check_columns(specs, schema)
    return TableDomain(tuple(build_column_domain(n, s, schema.field(n)) for n, s in specs.items()))
