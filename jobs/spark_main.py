"""spark-submit main: the trusted pass on Apache Spark, writing the measurements artifact.

    spark-submit --py-files jobs.zip jobs/spark_main.py --spec gs://bucket/specs/events.yaml
    python -m jobs.spark_main --spec specs/events.yaml --master local[2]

The spec's source is a catalog table (``source.table: warehouse.events``: Hive, BigQuery or Iceberg, whatever the
session's catalog serves) or files (``source.uri``). Under spark-submit (Dataproc Serverless, EMR, any cluster) the
session is the one spark-submit configured; ``--master`` matters only when run without spark-submit.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

if __package__ in (None, ""):  # spark-submit runs this file as a script; make the ``jobs`` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs.common import add_measure_args, fail, measure_from_args  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = add_measure_args(argparse.ArgumentParser(prog="jobs.spark_main", description=(__doc__ or "").split("\n")[0]))
    p.add_argument("--master", default=None,
                   help="Spark master when not under spark-submit (default: the active session's, else local[2]).")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        from pyspark.sql import SparkSession

        from transforms.spark import spark_session

        # under spark-submit (its gateway is up) the builder returns the session spark-submit configured
        if args.master is None and "PYSPARK_GATEWAY_PORT" in os.environ:
            spark = SparkSession.builder.appName("dpbeam-measure").getOrCreate()
        else:
            spark = spark_session(master=args.master or "local[2]")
        measure_from_args(args, "spark", {"spark": spark})
    except Exception as err:
        return fail(err, "jobs.spark_main", args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
