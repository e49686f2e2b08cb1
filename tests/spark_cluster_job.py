"""Run one Spark-engine aggregation against a standalone cluster and write the cubes to a file (used by
tests/test_spark.py, in its own process, because the test process already holds a local SparkContext).

Usage: python spark_cluster_job.py MASTER_URL SPEC_JSON KEY_HEX OUT_NPZ
The spec's privacy unit and k are used; the cubes are every 1-way and 2-way marginal, saved under "a|b" names.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def main(master: str, spec_path: str, key_hex: str, out: str) -> None:
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    from pyspark.sql import SparkSession

    from dpbeam.aggregate import MarginalCounts
    from dpbeam.bounding import BoundingKey
    from dpbeam.job import plan_job
    from dpbeam.marginals import all_cliques
    from dpbeam.progress import Ticker
    from dpbeam.spec import parse_spec
    from transforms.spark import run_aggregation

    with open(spec_path) as f:
        plan = plan_job(parse_spec(json.load(f)), check_outputs=False)
    cliques = all_cliques(plan.domain.names, 1) + all_cliques(plan.domain.names, 2)
    spark = (
        SparkSession.builder.master(master)
        .appName("dpbeam-cluster-test")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.memory", "512m")
        .config("spark.executor.memory", "512m")
        .config("spark.cores.max", "1")
        .config("spark.sql.shuffle.partitions", "3")
        .getOrCreate()
    )
    try:
        files = Ticker()
        cubes = run_aggregation(
            plan.source, MarginalCounts(plan.domain, cliques), plan.unit_column, plan.spec.privacy.k,
            BoundingKey(bytes.fromhex(key_hex)), advance=files, spark=spark,
        )
        executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1
    finally:
        spark.stop()
    np.savez(out, **{"|".join(c): cube for c, cube in cubes.items()}, __files=np.array([files.completed, files.total]), __executors=executors)


if __name__ == "__main__":
    main(*sys.argv[1:5])
