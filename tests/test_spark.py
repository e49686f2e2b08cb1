"""The Spark engine (transforms/spark.py): the same bounded rows and exact cubes as the local engine, from Parquet,
CSV and catalog-table sources, on local[2] and on a real standalone cluster started by the test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import assert_same_cubes, pair_counts, small_spec, small_table
from dpbeam.aggregate import BoundedCodes
from dpbeam.bounding import BoundingKey
from dpbeam.errors import SourceError
from dpbeam.job import plan_job
from dpbeam.progress import Ticker
from dpbeam.spec import parse_spec
from transforms import local

pytest.importorskip("pyspark")
from transforms import spark as spark_engine  # noqa: E402

KEY = BoundingKey(b"spark-engine-test-key-0123456789")
HERE = Path(__file__).resolve().parent


def _spec(source: str | dict, tmp_path, **privacy) -> dict:
    spec = small_spec("unused", str(tmp_path / "out"), **privacy)
    spec["source"] = source if isinstance(source, dict) else {"uri": source}
    return spec


def _plan(source: str | dict, tmp_path, engine: str = "local", not_null: bool = False, **privacy):
    options = privacy.pop("options", {})
    spec = _spec(source, tmp_path, **privacy)
    if not_null:  # nullable: false on every column, whatever the source's schema says
        spec["columns"] = {n: {**c, "nullable": False} for n, c in spec["columns"].items()}
    return plan_job(parse_spec(spec), check_outputs=False, engine=engine, **options)


def _both(plan, aggregation, spark, **options):
    k = plan.spec.privacy.k
    got = spark_engine.run_aggregation(plan.source, aggregation, plan.unit_column, k, KEY, spark=spark, **options)
    return got, local.run_aggregation(plan.source, aggregation, plan.unit_column, k, KEY)


def test_wire_types_round_trip_exactly():
    """Unsigned codes and uint64 hashes survive Spark's signed types bit for bit (no Spark needed)."""
    batch = pa.RecordBatch.from_arrays(
        [pa.array([0, 255], pa.uint8()), pa.array([0, 65535], pa.uint16()), pa.array([1, 2**64 - 1], pa.uint64())],
        names=["a", "b", "__unit_h1"],
    )
    wire = spark_engine.to_wire(batch)
    assert [f.type for f in wire.schema] == [pa.int16(), pa.int32(), pa.int64()]
    assert spark_engine.from_wire(wire, batch.schema).equals(batch)


@pytest.mark.parametrize("unit", [None, "user_id"])
def test_spark_equals_local(unit, units_dir, tmp_path, spark):
    privacy = {"unit": {"column": unit}, "max_rows_per_unit": 2} if unit else {}
    plan = _plan(units_dir, tmp_path, **privacy)
    files = Ticker()
    got, want = _both(plan, BoundedCodes(plan.domain), spark, partitions=3, advance=files)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == want.dtype
    assert (files.completed, files.total, files.unit) == (3, 3, "files")  # public units of the listing, never rows
    assert_same_cubes(*_both(plan, pair_counts(plan), spark))


def test_heavy_unit_is_bounded_to_k(tmp_path, spark):
    """One unit with 5,000 rows among small ones keeps exactly k rows, the same k rows as the local engine."""
    heavy = small_table(n=5000, seed=11).add_column(0, "user_id", pa.array(np.full(5000, 10_000, dtype=np.int64)))
    light = small_table(n=600, seed=12, units=150)
    path = tmp_path / "heavy.parquet"
    pq.write_table(pa.concat_tables([heavy.cast(light.schema), light]), path)
    k = 4
    plan = _plan(str(path), tmp_path, unit={"column": "user_id"}, max_rows_per_unit=k)
    got, want = _both(plan, BoundedCodes(plan.domain), spark, partitions=4)
    np.testing.assert_array_equal(got, want)
    per_unit = np.unique(light.column("user_id").to_numpy(), return_counts=True)[1]
    expected = k + int(np.minimum(per_unit, k).sum())  # the heavy unit (10,000) keeps k; each light unit min(rows, k)
    assert len(got) == expected
    cubes, _ = _both(plan, pair_counts(plan), spark)
    assert int(cubes[("color",)].sum()) == expected


def test_csv_source(tmp_path, spark):
    """Including empty string fields, which pyarrow (the local engine) reads as "" and Spark by default as null."""
    table = small_table(n=1500, seed=5, units=120)
    color = table.column("color").to_numpy(zero_copy_only=False).astype(object)
    color[::50] = None
    table = table.set_column(table.schema.get_field_index("color"), "color", pa.array(color, pa.string()))
    path = tmp_path / "users.csv"
    pacsv.write_csv(table, path)
    plan = _plan(str(path), tmp_path, unit={"column": "user_id"}, max_rows_per_unit=3)
    assert plan.source.format == "csv"
    got, want = _both(plan, BoundedCodes(plan.domain), spark)
    np.testing.assert_array_equal(got, want)
    rows = _plan(str(path), tmp_path)
    got, want = _both(rows, BoundedCodes(rows.domain), spark)
    np.testing.assert_array_equal(got, want)
    assert len(want) == 1500


def test_catalog_table_gives_the_same_cubes_as_parquet(units_dir, tmp_path, spark):
    spark = spark
    database, name = "dpbeam_test", "dpbeam_test.users"
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {database} LOCATION '{(tmp_path / 'db').as_uri()}'")
    spark.read.parquet(units_dir).write.saveAsTable(name)
    # saved: a catalog table holding a copy of the Parquet rows, stored under tmp_path
    try:
        privacy = {"unit": {"column": "user_id"}, "max_rows_per_unit": 2}
        # Spark's catalog tables declare every column nullable, the files NOT NULL: the spec pins nullability so that
        # both get the same domain (by default nullability follows each source's schema)
        files = _plan(units_dir, tmp_path, not_null=True, **privacy)
        table = _plan({"table": name}, tmp_path, engine="spark", options={"spark": spark}, not_null=True, **privacy)
        assert isinstance(table.source, spark_engine.CatalogSource)
        assert table.domain == files.domain
        got = spark_engine.run_aggregation(table.source, pair_counts(table), "user_id", 2, KEY, spark=spark)
        want = local.run_aggregation(files.source, pair_counts(files), "user_id", 2, KEY)
        assert_same_cubes(got, want)
    finally:
        spark.sql(f"DROP DATABASE IF EXISTS {database} CASCADE")


def test_catalog_source_refuses_bad_tables(spark):
    spark = spark
    with pytest.raises(SourceError, match="no_such_table"):
        spark_engine.catalog_source("no_such_table", spark=spark)
    spark.createDataFrame([(1, "a")], "user_id long, color string").createOrReplaceTempView("dpbeam_small_view")
    source = spark_engine.catalog_source("dpbeam_small_view", spark=spark, partitions=4)
    with pytest.raises(SourceError, match="'age'"):
        source.check(["color", "age"])
    source.check(["color", "user_id"])
    spark.createDataFrame([], "user_id long, color string").createOrReplaceTempView("dpbeam_empty_view")
    with pytest.raises(SourceError, match="no rows"):
        spark_engine.catalog_source("dpbeam_empty_view", spark=spark).check(["color"])


# ----------------------------------------------------------------------------------------------------------------------
# A real standalone cluster: master + worker JVMs on loopback, the job in a separate Python process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise AssertionError(f"{text!r} not seen in {log}:\n{tail}")


def _start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """End a process group this test started (the daemon JVM and, for the worker, its executors)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_standalone_cluster_equals_local(units_dir, tmp_path):
    import pyspark

    spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
    env = {
        **os.environ, "SPARK_HOME": str(spark_class.parent.parent), "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_DAEMON_MEMORY": "256m",
    }
    port = _free_port()
    url = f"spark://127.0.0.1:{port}"
    spec = _spec(units_dir, tmp_path, unit={"column": "user_id"}, max_rows_per_unit=2)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "cubes.npz"
    master = _start(
        [str(spark_class), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
         "--webui-port", str(_free_port())], tmp_path / "master.log", env,
    )
    worker = None
    try:
        _wait_for(tmp_path / "master.log", "I have been elected leader", master)
        worker = _start(
            [str(spark_class), "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores", "1",
             "--memory", "1g", "--webui-port", str(_free_port()), "--work-dir", str(tmp_path / "work")],
            tmp_path / "worker.log", env,
        )
        _wait_for(tmp_path / "worker.log", "Successfully registered with master", worker)
        job = subprocess.run(
            [sys.executable, str(HERE / "spark_cluster_job.py"), url, str(tmp_path / "spec.json"), KEY.secret.hex(),
             str(out)], env=env, capture_output=True, text=True, timeout=240,
        )
        assert job.returncode == 0, job.stderr[-4000:]
    finally:
        if worker is not None:
            _stop(worker)
        _stop(master)
    saved = np.load(out)
    assert int(saved["__executors"]) == 1  # the work ran on the cluster's executor, not in the driver
    assert saved["__files"].tolist() == [3, 3]  # progress counts the 3 files of the listing, never rows
    plan = _plan(units_dir, tmp_path, unit={"column": "user_id"}, max_rows_per_unit=2)
    want = local.run_aggregation(plan.source, pair_counts(plan), "user_id", 2, KEY)
    assert_same_cubes({tuple(n.split("|")): saved[n] for n in saved.files if not n.startswith("__")}, want)
