"""The canary test: plant unique values in a small table, run ``dpbeam run`` end to end on every engine and source
format, and look for them in every byte the run leaves behind and every byte it prints.

Canaries: a unique string in one row of a categorical column left open (DP discovery must drop it: one unit is far
below its threshold), a unique extreme number in an integer and in a float column left open (their bins are DP
quantiles, so an outlier is clamped, never an edge), and a unique string in the privacy-unit column (hashed, never
written). With them, the exact source row count (1,987) must appear nowhere either.

Each run is a subprocess (``python -m dpbeam.cli run``), so that every byte written to its stdout and stderr is
captured, the JVM's and Beam's logs included, and so that its temporary files can be confined to the test's
directory: ``TMPDIR`` (Python's tempfile), ``SPARK_LOCAL_DIRS`` and ``java.io.tmpdir`` (Spark's scratch space and
shuffle files), Beam's ``temp_location`` and Spark's warehouse all point under ``tmp_path``. After the run every file
under ``tmp_path`` except the source itself is scanned: as raw bytes, Parquet files also decompressed (every value,
the schema, the key-value metadata and the column statistics, as strings), and JSON files as text.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

N_ROWS = 1987  # the exact source row count: must appear nowhere (see ROW_COUNT)
K = 3  # max_rows_per_unit
SYNTHETIC_ROWS = 600  # output.rows, given explicitly (see _spec)

CANARY_UNIT = "CANARY-UNIT-q7Xz2Lw9"
CANARY_CATEGORY = "CANARY-CAT-m4Rt8Vn1"
CANARY_INT = 8_675_309_421  # in `amount`, whose other values lie in [10_000, 60_000]
CANARY_FLOAT = 771_234_567.8125  # in `score`, whose other values lie in [0, 1] (exact in binary: 0.8125 = 13/16)

# The canaries as they could be written: the strings, every usual decimal form of the numbers, and the numbers'
# binary forms (little- and big-endian int64/float64, as Parquet, NumPy and pickles store them).
CANARY_TEXT = [
    CANARY_UNIT, CANARY_CATEGORY, "q7Xz2Lw9", "m4Rt8Vn1",
    str(CANARY_INT), f"{CANARY_INT:,}", f"{CANARY_INT:.6e}", f"{float(CANARY_INT)!r}",
    "771234567", "771,234,567", f"{CANARY_FLOAT:.6e}", "7.712345678",
]
CANARY_BYTES = [
    struct.pack("<q", CANARY_INT), struct.pack(">q", CANARY_INT),
    struct.pack("<d", float(CANARY_INT)), struct.pack(">d", float(CANARY_INT)),
    struct.pack("<d", CANARY_FLOAT), struct.pack(">d", CANARY_FLOAT),
]
# The row count as a number, with or without a thousands separator (and "1987.0"), never as part of a longer number
# or of a hex string (hashes, uuids in file names): a digit, a hex letter or a dot on either side is another token.
ROW_COUNT = re.compile(r"(?<![0-9A-Fa-f.])1,?987(?:\.0+)?(?![0-9A-Fa-f]|\.[0-9]*[1-9])")
# Every number written must stay far below the numeric canaries' magnitude: bins at DP quantiles never reach an
# outlier held by one unit (other values are at most 60,000; the canaries are above 7e8).
MAGNITUDE_LIMIT = 1e8


def _table() -> pa.Table:
    """1,987 rows. 40 heavy units with 25 rows each and 985 light units with one row each, plus the canary unit with
    two rows: bounding at k = 3 keeps 40 * 3 + 985 + 2 = 1,107 rows, so every DP estimate of the row count is near
    1,107, far from 1,987: at this budget the 1-way marginals get noise of sigma ~16 per cell, so the estimate's
    standard deviation is a few dozen rows at most, and 880 rows is more than 20 of them: no chance match."""
    rng = np.random.default_rng(20240607)
    units = [f"heavy-{i:02d}" for i in range(40) for _ in range(25)] + [f"light-{i:04d}" for i in range(985)]
    units += [CANARY_UNIT, CANARY_UNIT]
    assert len(units) == N_ROWS
    order = rng.permutation(N_ROWS)
    units = [units[i] for i in order]
    color = rng.choice(["red", "green", "blue", "black"], size=N_ROWS, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
    amount = rng.integers(10_000, 60_001, N_ROWS)
    score = rng.beta(2, 5, N_ROWS)
    active = score > 0.3
    # the canaries of the value columns sit in rows of ordinary (light) units, so that they are only one row each
    light = [i for i, u in enumerate(units) if u.startswith("light-")]
    color[light[10]] = CANARY_CATEGORY
    amount[light[20]] = CANARY_INT
    score[light[30]] = CANARY_FLOAT
    return pa.table({
        "user_id": pa.array(units, pa.string()),
        "color": pa.array(list(color), pa.string()),
        "amount": pa.array(amount, pa.int64()),
        "score": pa.array(score, pa.float64()),
        "active": pa.array(active),
    })


def _kept_rows(table: pa.Table) -> int:
    _, rows = np.unique(np.asarray(table.column("user_id").to_pylist()), return_counts=True)
    return int(np.minimum(rows, K).sum())


def _spec(source: Path, out: Path, fmt: str) -> dict:
    return {
        "name": "canary",
        "source": {"uri": str(source), "format": fmt},
        "privacy": {
            "unit": {"column": "user_id"}, "epsilon": 4.0, "delta": 1e-6, "max_rows_per_unit": K,
            "discovery_fraction": 0.3,
        },
        "columns": {
            "color": {"kind": "categorical"},  # open: values discovered with DP
            "amount": {"kind": "integer", "bins": 4},  # open: bounds and bins discovered with DP
            "score": {"kind": "float", "bins": 4},  # open
            "active": {"kind": "boolean"},
        },
        "synthesizer": {"method": "mst", "engine": "pgm", "iters": 50},
        # The synthetic row count would default to a DP estimate of the (bounded) row count: it is given here, and
        # differs from 1,987, so that the row count test cannot match a legitimate output.
        "output": {"uri": str(out), "rows": SYNTHETIC_ROWS},
        "seed": 3,
    }


def _engine_args(engine: str, tmp: Path) -> list[str]:
    if engine == "beam":
        pytest.importorskip("apache_beam")
        (tmp / "beam-temp").mkdir()
        return ["--engine", "beam", "--engine-option", "runner=FnApiRunner",
                "--engine-option", f"temp_location={tmp / 'beam-temp'}"]
    if engine == "spark":
        pytest.importorskip("pyspark")
        return ["--engine", "spark", "--engine-option", "master=local[2]",
                "--engine-option", f"spark.sql.warehouse.dir={tmp / 'spark-warehouse'}",
                "--engine-option", f"spark.driver.extraJavaOptions=-Djava.io.tmpdir={tmp / 'java-tmp'}",
                "--engine-option", "spark.sql.shuffle.partitions=4",
                "--engine-option", "spark.ui.showConsoleProgress=false"]
    return ["--engine", "local"]


def _environment(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("tmp", "spark-local", "java-tmp"):
        (tmp / name).mkdir(exist_ok=True)
    env.update({
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "TMPDIR": str(tmp / "tmp"), "TEMP": str(tmp / "tmp"), "TMP": str(tmp / "tmp"),
        "SPARK_LOCAL_DIRS": str(tmp / "spark-local"),
        "JAX_PLATFORMS": "cpu", "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
        "COLUMNS": "200",
    })
    return env


def _write_source(table: pa.Table, fmt: str, src: Path) -> Path:
    src.mkdir()
    if fmt == "csv":
        path = src / "people.csv"
        pacsv.write_csv(table, path)
        return path
    half = table.num_rows // 2  # two files, so the engines read and shuffle more than one split
    pq.write_table(table.slice(0, half), src / "part-0.parquet")
    pq.write_table(table.slice(half), src / "part-1.parquet")
    return src


# ----------------------------------------------------------------------------------------------------------------------
# Scanning


def _parquet_texts(path: Path) -> Iterator[str]:
    """Everything a Parquet file holds, decompressed, as strings: its schema and key-value metadata, each row
    group's size and each column chunk's statistics, and every value."""
    meta = pq.read_metadata(path)
    yield str(meta.schema)
    for key, value in (meta.metadata or {}).items():
        yield key.decode("utf-8", "replace")
        yield value.decode("utf-8", "replace")
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        yield f"row group {g}: {group.num_rows} rows"
        for c in range(group.num_columns):
            stats = group.column(c).statistics
            if stats is not None and stats.has_min_max:
                yield f"min {stats.min!r} max {stats.max!r}"
    table = pq.read_table(path)
    yield str(table.schema)
    for column in table.columns:
        for value in column.to_pylist():
            yield from _value_texts(value)


def _value_texts(value) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _value_texts(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _value_texts(v)
    elif isinstance(value, bytes):
        yield value.decode("utf-8", "replace")
    else:
        yield str(value) if not isinstance(value, float) else repr(value)


def _numbers(value) -> Iterator[float]:
    """Every number in a JSON document or a Parquet value."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        yield float(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _numbers(v)


def _find_leaks(text: str, where: str) -> list[str]:
    found = [f"{where}: canary {c!r}" for c in CANARY_TEXT if c in text]
    found += [f"{where}: row count {m.group(0)!r} in ...{text[max(m.start() - 40, 0):m.end() + 40]!r}..."
              for m in ROW_COUNT.finditer(text)]
    return found


def _scan_file(path: Path) -> tuple[list[str], str]:
    """Leaks in one file, and what kind of file it was (raw bytes always; Parquet and JSON parsed too)."""
    data = path.read_bytes()
    leaks = _find_leaks(data.decode("latin-1"), str(path))
    leaks += [f"{path}: canary bytes {b.hex()}" for b in CANARY_BYTES if b in data]
    kind = "bytes"
    if data[:4] == b"PAR1":
        kind = "parquet"
        texts = list(_parquet_texts(path))
        leaks += _find_leaks("\n".join(texts), f"{path} (decompressed)")
        for column in pq.read_table(path).columns:
            big = [x for x in _numbers(column.to_pylist()) if abs(x) >= MAGNITUDE_LIMIT]
            if big:
                leaks.append(f"{path} (decompressed): column {column!r} holds {big[:3]}")
    elif path.suffix == ".json":
        kind = "json"
        big = [x for x in _numbers(json.loads(data)) if abs(x) >= MAGNITUDE_LIMIT]
        if big:
            leaks.append(f"{path}: numbers of the canaries' magnitude {big[:3]}")
    return leaks, kind


def _scan_tree(root: Path, skip: Path) -> tuple[list[str], dict[str, int]]:
    leaks: list[str] = []
    kinds: dict[str, int] = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file() or path == skip or skip in path.parents:
            continue
        leaks += _find_leaks(str(path.relative_to(root)), f"file name {path}")
        found, kind = _scan_file(path)
        leaks += found
        kinds[kind] = kinds.get(kind, 0) + 1
    return leaks, kinds


# ----------------------------------------------------------------------------------------------------------------------
# The test


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("engine", ["local", "beam", "spark"])
def test_no_canary_and_no_row_count_anywhere(engine, fmt, tmp_path):
    table = _table()
    assert _kept_rows(table) == 1107  # see _table: every DP row estimate sits near this, far from 1,987
    src = _write_source(table, fmt, tmp_path / "src")
    out = tmp_path / "out" / "synthetic"
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(_spec(src, out, fmt)))
    args = _engine_args(engine, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "dpbeam.cli", "run", str(spec_path), *args],
        cwd=tmp_path, env=_environment(tmp_path), capture_output=True, timeout=900,
    )
    stdout, stderr = result.stdout.decode("utf-8", "replace"), result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0, stdout + stderr
    # the run did what it is meant to, so that the scan below looks at real outputs
    assert (out / "_SUCCESS").exists() and (out / "_release.json").exists()
    measurements = Path(str(out) + ".measurements")
    assert (measurements / "_SUCCESS").exists()
    synthetic = pq.read_table(out)
    assert synthetic.num_rows == SYNTHETIC_ROWS
    color = next(c for c in json.loads((measurements / "domain.json").read_text())["columns"] if c["name"] == "color")
    assert color["values"] and color["other_label"] == "__other__"  # discovery kept values, dropped the rest
    assert "DP domain of color" in stderr and "DP bins of amount" in stderr and "DP bins of score" in stderr
    assert "wrote 600 synthetic rows" in stderr + stdout

    leaks = _find_leaks(stdout, "stdout") + _find_leaks(stderr, "stderr")
    written, kinds = _scan_tree(tmp_path, skip=src)
    leaks += written
    assert not leaks, "\n".join(leaks)
    # the scan read the artifact's and the table's Parquet and JSON files (and the spec, which is public)
    assert kinds.get("parquet", 0) >= 2 and kinds.get("json", 0) >= 4, kinds


def test_the_scan_finds_what_it_looks_for(tmp_path):
    """The scan above can fail: a canary inside a compressed Parquet file, a numeric canary, the row count in JSON
    or text are found; numbers that merely contain the row count's digits are not."""
    leaky = pa.table({"color": [CANARY_CATEGORY, "red"], "amount": [CANARY_INT, 1], "score": [0.5, CANARY_FLOAT]})
    pq.write_table(leaky, tmp_path / "leaky.parquet", compression="zstd")
    leaks, kind = _scan_file(tmp_path / "leaky.parquet")
    assert kind == "parquet"
    assert any("(decompressed): canary 'CANARY-CAT" in x for x in leaks), leaks
    assert any(f"(decompressed): canary '{CANARY_INT}'" in x for x in leaks), leaks
    assert any("column" in x and "holds" in x for x in leaks), leaks  # the magnitude check
    pq.write_table(pa.table({"x": [1.0]}).replace_schema_metadata({"rows": "1987"}), tmp_path / "meta.parquet")
    assert _scan_file(tmp_path / "meta.parquet")[0]

    for text in ('{"rows": 1987}', '{"rows": 1987.0}', "read 1,987 rows", "n=1987."):
        (tmp_path / "leaky.json").write_text(text if text.startswith("{") else json.dumps({"note": text}))
        assert _scan_file(tmp_path / "leaky.json")[0], text
    for text in ("0.1987", "19875", "11987", "1987.5", "a1987f", "2.1987e3", "sha 01987ab"):
        (tmp_path / "fine.json").write_text(json.dumps({"note": text}))
        assert not _scan_file(tmp_path / "fine.json")[0], text
    (tmp_path / "big.json").write_text(json.dumps({"edges": [0, CANARY_INT / 7]}))
    assert _scan_file(tmp_path / "big.json")[0]  # an edge at the canary's magnitude gives it away
