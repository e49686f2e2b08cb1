"""A realistic user-event table for the engine benchmarks, generated chunk by chunk (memory does not grow with rows).

Each row: ``user_id`` (int64) and ATTRIBUTES columns: skewed categoricals (Zipf-like frequencies over public value
lists), integer and float measures (log-normal, clamped by the spec's public bounds), and an event timestamp. Rows per
user are heavy-tailed: most users have 1-5 rows, about 1 in 1000 has hundreds to thousands. Users are scattered over
all files, so bounding needs a real shuffle. Deterministic for a seed.

``python benchmarks/events.py OUT_DIR --rows 1000000`` writes OUT_DIR/part-*.parquet and OUT_DIR.yaml (a job spec).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

CATEGORICAL = {
    "country": 30, "device": 6, "browser": 8, "plan": 4, "channel": 12, "language": 20, "segment": 10,
}
NUMERIC = {"sessions": ("integer", (0, 199), 20), "amount": ("float", (0.0, 500.0), 20)}
TIMESTAMP = ("event_time", ("2024-01-01", "2024-12-31"))
ATTRIBUTES = list(CATEGORICAL) + list(NUMERIC) + [TIMESTAMP[0]]  # 10 attributes
ROWS_PER_FILE = 1_000_000


def _values(name: str, n: int) -> list[str]:
    return [f"{name}_{i:02d}" for i in range(n)]


def rows_per_user(rows: int, rng: np.random.Generator) -> np.ndarray:
    """Heavy-tailed counts summing to ``rows``: geometric 1-5 for most users, Pareto for 0.1% of them."""
    users = rows  # more than enough: the counts are cut where their running sum reaches rows
    counts = np.minimum(rng.geometric(0.45, users), 5)
    heavy = rng.random(users) < 0.001
    counts[heavy] = np.minimum(100 + (rng.pareto(1.1, heavy.sum()) * 300).astype(np.int64), 5000)
    total = np.cumsum(counts)
    cut = int(np.searchsorted(total, rows))
    counts = counts[: cut + 1]
    counts[-1] -= int(counts.sum() - rows)
    return counts[counts > 0]


def _chunk(user_ids: np.ndarray, rng: np.random.Generator) -> pa.Table:
    n = len(user_ids)
    cols = {"user_id": pa.array(user_ids)}
    for name, size in CATEGORICAL.items():
        p = 1.0 / np.arange(1, size + 1) ** 1.1
        cols[name] = pa.array(np.asarray(_values(name, size))[rng.choice(size, n, p=p / p.sum())]).dictionary_encode()
    cols["sessions"] = pa.array(np.minimum(rng.lognormal(2.0, 1.0, n), 400).astype(np.int64))
    cols["amount"] = pa.array(np.round(rng.lognormal(3.0, 1.2, n), 2))
    start = np.datetime64("2024-01-01T00:00:00", "s").astype(np.int64)
    cols[TIMESTAMP[0]] = pa.array((start + rng.integers(0, 366 * 86400, n)).astype("datetime64[s]").astype("datetime64[us]"))
    return pa.table(cols)


def generate(out_dir: str | Path, rows: int, seed: int = 0) -> Path:
    """Write the table under ``out_dir`` and a spec next to it; return the spec path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts = rows_per_user(rows, rng)
    users = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    rng.shuffle(users)  # scatter each user's rows over all files
    for i, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        pq.write_table(_chunk(users[start : start + ROWS_PER_FILE], rng), out_dir / f"part-{i:05d}.parquet")
    spec_path = out_dir.with_suffix(".yaml")
    spec_path.write_text(yaml.safe_dump(spec(out_dir), sort_keys=False))
    return spec_path


def spec(out_dir: Path, k: int = 10) -> dict:
    columns: dict = {n: {"kind": "categorical", "values": _values(n, s)} for n, s in CATEGORICAL.items()}
    for n, (kind, bounds, bins) in NUMERIC.items():
        columns[n] = {"kind": kind, "bounds": list(bounds), "bins": bins}
    columns[TIMESTAMP[0]] = {"kind": "datetime", "bounds": list(TIMESTAMP[1]), "granularity": "month"}
    return {
        "name": "events-benchmark",
        "source": {"uri": str(out_dir)},
        "privacy": {"unit": {"column": "user_id"}, "epsilon": 1.0, "delta": 1e-9, "max_rows_per_unit": k},
        "columns": columns,
        "output": {"uri": str(out_dir) + "-synthetic"},
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(generate(a.out_dir, a.rows, a.seed))
