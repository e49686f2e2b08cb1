"""Shared fixtures: small tables on disk and specs that describe them (tiny domains keep JAX compiles short)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def small_table(n: int = 2000, seed: int = 0, units: int | None = None) -> pa.Table:
    """A table with every column kind, correlated columns, and optionally a user id with skewed rows per user."""
    rng = np.random.default_rng(seed)
    color = rng.choice(["red", "green", "blue"], size=n, p=[0.5, 0.3, 0.2])
    age = np.where(color == "red", rng.integers(18, 40, n), rng.integers(30, 80, n))
    score = np.clip(age / 80 + rng.normal(0, 0.1, n), 0, 1)
    day = np.datetime64("2024-01-01") + rng.integers(0, 90, n).astype("timedelta64[D]")
    active = score > 0.5
    cols = {
        "color": pa.array(color),
        "age": pa.array(age.astype(np.int64)),
        "score": pa.array(score),
        "day": pa.array(day.astype("datetime64[us]"), type=pa.timestamp("us")),
        "active": pa.array(active),
    }
    if units is not None:
        # heavy-tailed rows per user: most have 1-3 rows, a few have many
        weights = rng.pareto(1.2, units) + 1
        cols = {"user_id": pa.array(rng.choice(units, size=n, p=weights / weights.sum()).astype(np.int64)), **cols}
    # NOT NULL in the schema (public metadata): the columns get no null code unless a spec says nullable: true
    return pa.table(cols, schema=pa.schema([pa.field(n, a.type, nullable=False) for n, a in cols.items()]))


def small_spec(source: str, out: str, **privacy) -> dict:
    return {
        "name": "small",
        "source": {"uri": source},
        "privacy": {"epsilon": 2.0, "delta": 1e-6, **privacy},
        "columns": {
            "color": {"kind": "categorical", "values": ["red", "green", "blue"]},
            "age": {"kind": "integer", "bounds": [18, 79], "bins": 4},
            "score": {"kind": "float", "bounds": [0.0, 1.0], "bins": 4},
            "day": {"kind": "datetime", "bounds": ["2024-01-01", "2024-03-31"], "granularity": "month"},
            "active": {"kind": "boolean"},
        },
        "synthesizer": {"iters": 200},
        "output": {"uri": out},
        "seed": 1,
    }


def pair_counts(plan):
    """MarginalCounts of every 1-way and 2-way marginal of a plan's domain."""
    from dpbeam.aggregate import MarginalCounts
    from dpbeam.marginals import all_cliques

    return MarginalCounts(plan.domain, all_cliques(plan.domain.names, 1) + all_cliques(plan.domain.names, 2))


def assert_same_cubes(got: dict, want: dict) -> None:
    """The same cliques, the same counts cell by cell, the same dtypes."""
    assert set(got) == set(want)
    for c in want:
        np.testing.assert_array_equal(got[c], want[c], err_msg=str(c))
        assert got[c].dtype == want[c].dtype


@pytest.fixture
def small_parquet(tmp_path):
    path = tmp_path / "small.parquet"
    pq.write_table(small_table(), path)
    return str(path)


@pytest.fixture
def units_dir(tmp_path) -> str:
    """Three Parquet files whose units spread across files, so bounding needs the engines' shuffle."""
    table = small_table(n=3000, seed=3, units=200)
    d = tmp_path / "src"
    d.mkdir()
    for i, start in enumerate(range(0, 3000, 1000)):
        pq.write_table(table.slice(start, 1000), d / f"part-{i}.parquet")
    return str(d)


@pytest.fixture
def users_parquet(tmp_path):
    path = tmp_path / "users.parquet"
    pq.write_table(small_table(n=3000, units=300), path)
    return str(path)


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """One local[2] Spark session for the whole test session (start-up costs 5-10 s)."""
    import sys

    pytest.importorskip("pyspark")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("dpbeam-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.warehouse.dir", str(tmp_path_factory.mktemp("warehouse")))
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "4")
        .config("spark.driver.memory", "2g")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    yield session
    session.stop()


def tiny_spec(tmp_path, ledger_uri: str | None, **output) -> dict:
    """Two columns, plain MST, a few iterations: the ledger is what is under test, not the synthesis."""
    src = tmp_path / "users.parquet"
    if not src.exists():
        pq.write_table(small_table(n=300, units=60), src)
    spec = {
        "name": "tiny",
        "source": {"uri": str(src)},
        "privacy": {"unit": {"column": "user_id"}, "epsilon": 1.0, "delta": 1e-6, "max_rows_per_unit": 2},
        "columns": {"color": {"kind": "categorical", "values": ["red", "green", "blue"]}, "active": {"kind": "boolean"}},
        "synthesizer": {"method": "mst", "iters": 10},
        "output": {"uri": str(tmp_path / "out"), "rows": 200, **output},
    }
    if ledger_uri:
        spec["ledger"] = {"uri": ledger_uri, "dataset": "users"}
    return spec
