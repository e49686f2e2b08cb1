"""`dpbeam init`: a commented job spec written from a source's schema, the first step of a new user.

Only public metadata is read: the Parquet footer of the first file, or the header line of the first CSV file. No row
is read and no type is inferred from values. Each column's kind follows from its Arrow type (:data:`KIND_OF`); CSV
headers carry no types, so every CSV column starts as ``categorical`` with a comment asking the user to set its kind.
Every domain is left open for DP discovery, so the spec runs as written (with ``discovery_fraction``); the comments
say which public facts to write in instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pyarrow as pa
import yaml

from dpbeam.domain import arrow_type_to_str
from dpbeam.errors import SpecError
from dpbeam.source import open_source
from dpbeam.spec import SourceSpec, parse_spec

EPSILON = 1.0
DELTA = 1e-9
DISCOVERY_FRACTION = 0.1

# Arrow type -> dpbeam column kind; the first rule that holds wins. Types no rule holds (lists, structs, maps,
# binary, times of day, durations, ...) cannot be synthesized and are left out with a comment.
KIND_OF: list[tuple[Callable[[pa.DataType], bool], str]] = [
    (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "categorical"),
    (pa.types.is_boolean, "boolean"),
    (pa.types.is_integer, "integer"),
    (lambda t: pa.types.is_floating(t) or pa.types.is_decimal(t), "float"),
    (lambda t: pa.types.is_timestamp(t) or pa.types.is_date(t), "datetime"),
]

_OPEN_HINT = {
    "categorical": "values: [...] when the list is public",
    "integer": "bounds: [lo, hi] when public",
    "float": "bounds: [lo, hi] when public",
    "datetime": "bounds: [start, end] when public",
    "boolean": "",
}


def kind_of(arrow_type: pa.DataType) -> str | None:
    """The column kind for an Arrow type (dictionary columns by their value type); None when dpbeam cannot
    synthesize the type."""
    t = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    return next((kind for rule, kind in KIND_OF if rule(t)), None)


def read_schema(source: str, fmt: str | None = None) -> tuple[pa.Schema, str]:
    """The source's schema and format, from metadata only (Parquet footer, or CSV header line read as strings)."""
    src = open_source(SourceSpec(uri=source, format=fmt))
    return src.schema, src.format


def _flow(key: str, value: object) -> str:
    """``key: value`` as one YAML line (keys and values quoted where YAML needs it)."""
    return yaml.safe_dump({key: value}, default_flow_style=True, sort_keys=False, width=1 << 30).strip()[1:-1]


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def _local_path(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _name(source: str) -> str:
    stem = source.rstrip("/").split("/")[-1]
    for suffix in (".gz", ".csv", ".parquet", ".parq", ".pq"):
        stem = stem.removesuffix(suffix)
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in stem).strip("-")
    return stem or "dpbeam-job"


def init_spec_text(source: str, unit: str | None = None, fmt: str | None = None) -> str:
    """A commented YAML job spec for ``source`` (see the module doc); ``unit`` is the privacy-unit column (every row
    its own unit when None). The text parses as a valid spec as written."""
    schema, fmt = read_schema(source, fmt)
    if unit is not None and unit not in schema.names:
        raise SpecError(f"--unit {unit!r} is not a column of {source} (it has {schema.names}); name the column "
                        "that identifies a person, account or device")
    csv = fmt == "csv"
    name = _name(source)
    src_uri = str(Path(source.removeprefix("file://")).expanduser().resolve()) if _local_path(source) else source
    kept: list[tuple[str, str, pa.DataType]] = []
    left_out: list[tuple[str, pa.DataType]] = []
    for field in schema:
        if field.name == unit:
            continue
        kind = kind_of(field.type)
        if kind is None:
            left_out.append((field.name, field.type))
        else:
            kept.append((field.name, kind, field.type))
    if not kept:
        raise SpecError(f"no column of {source} has a type dpbeam can synthesize (strings, integers, floats, "
                        "decimals, timestamps, dates, booleans); nothing to write a spec for")

    lines = [
        f"# dpbeam job spec for {source}, written by `dpbeam init` from the table's schema (no row was read).",
        "# Review it, then run: dpbeam run THIS_FILE",
        "# Relative paths are relative to this file. Nulls get their own code wherever the schema allows them",
        "# (files written from pandas allow them in every column): the noise then gives a few null rows to a column",
        "# that has none. Add nullable: false to a column known never to be null (a public fact, such as a NOT NULL",
        "# constraint upstream); a null found there stops the job before any noise is drawn.",
        _flow("name", name),
        "source:",
        "  " + _flow("uri", src_uri),
        "  " + _flow("format", fmt),
        "privacy:",
    ]
    if unit is None:
        lines += [
            "  # Row-level privacy: each row is protected on its own. If one person, account or device can own",
            "  # several rows, rerun `dpbeam init --unit COLUMN` so that all of a unit's rows are protected together.",
            "  unit: row",
        ]
    else:
        lines += [
            f"  # The privacy unit: all rows sharing one value of {unit} are protected together (never synthesized).",
            "  unit: {" + _flow("column", unit) + "}",
        ]
    lines += [
        f"  epsilon: {EPSILON}",
        f"  delta: {DELTA:.1e}  # keep it well below 1 / (number of units)",
    ]
    if unit is not None:
        lines.append("  max_rows_per_unit: auto  # k, the most rows kept per unit: chosen with DP; or give a number")
    lines += [
        f"  discovery_fraction: {DISCOVERY_FRACTION}  # share of the budget spent on the domains left open below"
        + (" and on k" if unit is not None else ""),
        "columns:",
        "  # Every domain is left open: dpbeam discovers it with DP, from discovery_fraction of the budget. Where a",
        "  # column's domain is public (known without looking at the data), write it in: categorical values: [a, b],",
        "  # integer/float bounds: [lo, hi] (and bins: N), datetime bounds: [2020-01-01, 2024-12-31]. It spends",
        "  # nothing and is usually more accurate than discovery.",
    ]
    if csv:
        lines += [
            "  # CSV HAS NO TYPES: its header names the columns but not their types, and dpbeam never guesses types",
            "  # from values. Every column below is kind: categorical (read as text) until you SET ITS KIND: integer,",
            "  # float, datetime or boolean for each numeric, date or true/false column.",
        ]
    for col, kind, t in kept:
        if csv:
            note = "CSV: set the kind (categorical, integer, float, datetime or boolean)"
        else:
            hint = _OPEN_HINT[kind]
            note = arrow_type_to_str(t) + (f"; {hint}" if hint else "")
        lines.append("  " + _flow(col, {"kind": kind}) + "  # " + note)
    if left_out:
        lines.append("  # Left out: dpbeam cannot synthesize these types (lists, structs, binary, ...):")
        lines += [f"  #   {_one_line(col)}: {arrow_type_to_str(t)}" for col, t in left_out]
    lines += [
        "output:",
        "  # Where the synthetic Parquet table goes (the DP measurements go next to it, as URI.measurements).",
        "  " + _flow("uri", f"{name}-synthetic"),
        "",
    ]
    text = "\n".join(lines)
    parse_spec(yaml.safe_load(text))  # what init writes is always a valid spec
    return text


def write_init_spec(
    source: str, out: str | os.PathLike, unit: str | None = None, fmt: str | None = None, overwrite: bool = False
) -> str:
    """Write :func:`init_spec_text` to ``out`` (refusing to replace a file unless ``overwrite``); return the text."""
    path = Path(out)
    if path.exists() and not overwrite:
        raise SpecError(f"{path} already exists; choose another --out or pass --overwrite")
    text = init_spec_text(source, unit=unit, fmt=fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text
