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

from jobs.common import fail, load_spec_uri, measure_to_artifact, parse_sets  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobs.spark_main", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--spec", required=True, help="The job spec's URI (local path, gs://, s3://).")
    p.add_argument("--measurements-uri", "--measurements_uri", dest="measurements_uri", default=None,
                   help="Where to write the artifact (default: the spec's output.measurements_uri).")
    p.add_argument("--master", default=None,
                   help="Spark master when not under spark-submit (default: the active session's, else local[2]).")
    p.add_argument("--partitions", type=int, default=None, help="Shuffle partitions of unit-level stages.")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing artifact.")
    p.add_argument("--set", dest="sets", action="append", default=[], help="Override a spec field: KEY=VALUE.")
    p.add_argument("--debug", action="store_true", help="Raise with the full traceback (trusted side only).")
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
        options = {"spark": spark}
        if args.partitions is not None:
            options["partitions"] = args.partitions
        spec = load_spec_uri(args.spec, parse_sets(args.sets))
        measure_to_artifact(spec, "spark", args.measurements_uri, args.overwrite, **options)
    except Exception as err:
        return fail(err, "jobs.spark_main", args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
