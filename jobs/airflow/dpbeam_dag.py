"""Airflow DAG ``dpbeam_release``: one scheduled DP release of a warehouse table, with the privacy ledger around it.

    ledger_reserve -> choose_engine -> measure_dataflow | measure_spark -> measured -> synthesize -> evaluate
        -> register -> ledger_commit                 and, on any failure: ledger_release (frees a live reservation)

- ``ledger_reserve`` (BashOperator, ``dpbeam ledger reserve SPEC``) reserves the run's planned budget in the spec's
  ledger before any job starts, or fails the run (budget exhausted) before anything is launched. Its last stdout line,
  the entry id, is the task's XCom.
- ``measure_dataflow`` (DataflowStartFlexTemplateOperator: the flex template of ``jobs/docker/flex-template.Dockerfile``)
  or ``measure_spark`` (SparkSubmitOperator running ``jobs/spark_main.py``): the trusted pass, as the measure account.
  Both adopt the reserved entry (``--ledger_entry``), mark it spent once measurements exist, and write the artifact.
  Which one runs: the run's ``engine`` (trigger config), else the Airflow Variable ``dpbeam_engine``, else the
  param's default ``dataflow``.
- ``synthesize`` (CloudRunExecuteJobOperator): the Cloud Run GPU job of ``terraform/jobs.tf`` (image
  ``jobs/docker/synthesis.Dockerfile``), post-processing only, as the synthesize account (no access to raw data);
  its arguments are overridden per run. Chosen over a GKE pod: it needs no cluster, and terraform already defines it.
- ``evaluate`` (CloudRunExecuteJobOperator): a trusted-side Cloud Run job (image
  ``jobs/docker/evaluate.Dockerfile``, as the measure account: it reads raw rows) writing the NOT-DP evaluation report
  to a trusted folder; it prints no figure into the logs.
- ``register`` (BigQueryCreateTableOperator): a BigQuery external table over the synthetic Parquet, for analysts.
- ``ledger_commit`` (BashOperator, ``dpbeam ledger commit``): the entry becomes committed, with the release statement
  and the BigQuery table as its table_ref.
- ``ledger_release`` (BashOperator, trigger rule ONE_FAILED): after a failure anywhere, frees the entry if it is still
  only reserved (``--if-reserved``); a spent entry (measurements exist) keeps counting, as it must. When every task
  succeeds it is skipped. It is not downstream of ``ledger_commit``, so that ``ledger_commit`` stays a leaf: a run
  that failed ends failed (its commit upstream_failed) rather than succeeding with its cleanup.

Setup, once (see README "Running in production"): the Variable ``dpbeam_config`` (JSON) with the keys of
:data:`CONFIG_KEYS`; an Airflow connection ``dpbeam_spark`` for spark-submit (only for the Spark engine); on the
workers, the ``dpbeam`` command (``pip install "dpbeam[ledger]" gcsfs``, best in its own virtual environment,
named by ``dpbeam_config.cli``) and the ledger's credentials (e.g. ``PGPASSWORD``).
"""

from __future__ import annotations

import re
import shlex
from datetime import datetime, timedelta

try:  # Airflow 3
    from airflow.sdk import DAG, Param, TriggerRule
except ImportError:  # Airflow 2.10+
    from airflow import DAG
    from airflow.models.param import Param
    from airflow.utils.trigger_rule import TriggerRule
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.google.cloud.operators.bigquery import BigQueryCreateTableOperator
from airflow.providers.google.cloud.operators.cloud_run import CloudRunExecuteJobOperator
from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.python import BranchPythonOperator

DAG_ID = "dpbeam_release"
ENGINES = ("dataflow", "spark")
SPARK_CONN_ID = "dpbeam_spark"

#: Keys of the ``dpbeam_config`` Variable (JSON): where things are, not what a run releases.
CONFIG_KEYS = {
    "project": "GCP project of the jobs",
    "region": "their region",
    "ledger": "the ledger's SQLAlchemy URL, as in the specs' ledger.uri (no password: give it to the workers' env)",
    "cli": "the dpbeam command on the Airflow workers (e.g. /opt/dpbeam/bin/dpbeam)",
    "flex_template": "gs:// path of the flex template spec (JSON) built from jobs/docker/flex-template.Dockerfile",
    "measure_service_account": "the measure account's email (reads raw, writes artifacts)",
    "scratch": "gs:// folder for Dataflow temp and staging files",
    "spark_main": "jobs/spark_main.py where spark-submit finds it (a path on the worker, or gs://...)",
    "jobs_zip": "a zip of jobs/ for spark-submit --py-files (dpbeam itself installed on the cluster)",
    "synthesize_job": "the Cloud Run GPU job of terraform/jobs.tf (name)",
    "evaluate_job": "a trusted-side Cloud Run job running jobs/docker/evaluate.Dockerfile as the measure account",
    "artifacts": "gs:// prefix for each run's measurements artifact",
    "synthetic": "gs:// prefix for each run's synthetic table (the bucket analysts read)",
    "reports": "gs:// prefix for each run's NOT-DP evaluation report (trusted: not the synthetic bucket)",
    "bq_dataset": "BigQuery dataset (project.dataset) where the synthetic tables are registered for analysts",
}


def slug(text: str) -> str:
    """A run id as a name Dataflow, GCS and BigQuery all accept: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:63] or "run"


def shquote(value: object) -> str:
    """A value as one shell word. Plain ``str`` first: Jinja's ``tojson`` returns Markup, which would HTML-escape the
    quotes ``shlex.quote`` adds."""
    return shlex.quote(str.__str__(value) if isinstance(value, str) else str(value))


def choose_engine(engine: str) -> str:
    """The measure task to run for ``engine`` (a run's config, the Variable, or the param's default)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}: set the run's config "
                         "{\"engine\": ...} or the Airflow Variable dpbeam_engine")
    return f"measure_{engine}"


def cfg(key: str) -> str:
    """A Jinja expression for a key of the ``dpbeam_config`` Variable."""
    if key not in CONFIG_KEYS:
        raise KeyError(f"{key} is not a dpbeam_config key; add it to CONFIG_KEYS with its meaning")
    return f"var.json.dpbeam_config.{key}"


def t(expr: str) -> str:
    """A template for an operator's field: the expression's value."""
    return "{{ " + expr + " }}"


def sh(expr: str) -> str:
    """A template for a shell command: the expression's value, quoted (no rendered value reaches a shell bare)."""
    return "{{ (" + expr + ") | shquote }}"


# Jinja expressions, rendered per run. Each run writes its own folders, named after the release and the run id.
RUN = "(run_id | slug)"
ENTRY = "ti.xcom_pull(task_ids='ledger_reserve')"
SPEC = "params.spec"
MEASUREMENTS = f"{cfg('artifacts')} ~ '/' ~ params.name ~ '/' ~ {RUN} ~ '/measurements'"
SYNTHETIC = f"{cfg('synthetic')} ~ '/' ~ params.name ~ '/' ~ {RUN}"
REPORT = f"{cfg('reports')} ~ '/' ~ params.name ~ '/' ~ {RUN}"
TABLE_ID = f"(params.name ~ '_' ~ {RUN}) | replace('-', '_')"
BQ_TABLE = f"{cfg('bq_dataset')} ~ '.' ~ ({TABLE_ID})"
TABLE_REF = "{'bigquery': " + BQ_TABLE + "} | tojson"
FAILED_NOTE = "'DAG run ' ~ run_id ~ ' failed'"
CLI = t(cfg("cli"))
LEDGER_ENV = {"DPBEAM_LEDGER": t(cfg("ledger"))}


with DAG(
    dag_id=DAG_ID,
    description="dpbeam: a DP synthetic release of one table, ledger-reserved, measured, synthesized, evaluated, "
                "registered and committed",
    schedule="@daily",
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,  # the ledger serializes reservations anyway; one run at a time keeps the budget legible
    default_args={"retries": 0, "execution_timeout": timedelta(hours=6)},  # a rerun must be a new reservation
    params={
        "spec": Param("gs://SPECS/user_events.yaml", type="string", description="The job spec's URI."),
        "name": Param("user-events", type="string", pattern=r"^[a-z][a-z0-9-]{0,40}$",
                      description="Short name of the release: folders and the BigQuery table are named after it."),
        "engine": Param("dataflow", enum=list(ENGINES), description="Where the trusted pass runs (a run's config "
                        "wins over the Variable dpbeam_engine, which wins over this default)."),
    },
    user_defined_filters={"slug": slug, "shquote": shquote},
    render_template_as_native_obj=False,
    tags=["dpbeam", "differential-privacy"],
) as dag:
    reserve = BashOperator(
        task_id="ledger_reserve",
        bash_command=f"{CLI} ledger reserve {sh(SPEC)}",
        do_xcom_push=True,  # the last stdout line: the entry id
    )

    choose = BranchPythonOperator(
        task_id="choose_engine",
        python_callable=choose_engine,
        op_kwargs={"engine": "{{ (dag_run.conf or {}).get('engine') or var.value.get('dpbeam_engine', params.engine) }}"},
    )

    measure_dataflow = DataflowStartFlexTemplateOperator(
        task_id="measure_dataflow",
        project_id=t(cfg("project")),
        location=t(cfg("region")),
        wait_until_finished=True,
        body={
            "launchParameter": {
                "jobName": t(f"'dpbeam-measure-' ~ {RUN}"),
                "containerSpecGcsPath": t(cfg("flex_template")),
                "parameters": {"spec": t(SPEC), "measurements_uri": t(MEASUREMENTS), "ledger_entry": t(ENTRY)},
                "environment": {
                    "serviceAccountEmail": t(cfg("measure_service_account")),
                    "tempLocation": t(f"{cfg('scratch')} ~ '/tmp'"),
                    "stagingLocation": t(f"{cfg('scratch')} ~ '/staging'"),
                    "ipConfiguration": "WORKER_IP_PRIVATE",
                },
            }
        },
    )

    measure_spark = SparkSubmitOperator(
        task_id="measure_spark",
        conn_id=SPARK_CONN_ID,
        application=t(cfg("spark_main")),
        py_files=t(cfg("jobs_zip")),
        name=t(f"'dpbeam-measure-' ~ {RUN}"),
        application_args=["--spec", t(SPEC), "--measurements-uri", t(MEASUREMENTS), "--ledger-entry", t(ENTRY)],
    )

    measured = EmptyOperator(task_id="measured", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)

    synthesize = CloudRunExecuteJobOperator(
        task_id="synthesize",
        project_id=t(cfg("project")),
        region=t(cfg("region")),
        job_name=t(cfg("synthesize_job")),
        overrides={"container_overrides": [{"args": ["--measurements", t(MEASUREMENTS), "--out", t(SYNTHETIC)]}]},
    )

    evaluate = CloudRunExecuteJobOperator(
        task_id="evaluate",
        project_id=t(cfg("project")),
        region=t(cfg("region")),
        job_name=t(cfg("evaluate_job")),
        overrides={"container_overrides": [{"args": [
            "--spec", t(SPEC), "--synth", t(SYNTHETIC), "--measurements", t(MEASUREMENTS), "--report-out", t(REPORT),
        ]}]},
    )

    register = BigQueryCreateTableOperator(
        task_id="register",
        project_id=t(f"{cfg('bq_dataset')}.split('.')[0]"),
        dataset_id=t(f"{cfg('bq_dataset')}.split('.')[1]"),
        table_id=t(TABLE_ID),
        table_resource={
            "description": t(f"'dpbeam synthetic table (differentially private); release statement: ' ~ "
                             f"{SYNTHETIC} ~ '/_release.json'"),
            "externalDataConfiguration": {"sourceFormat": "PARQUET", "autodetect": True,
                                          "sourceUris": [t(f"{SYNTHETIC} ~ '/*.parquet'")]},
        },
    )

    commit = BashOperator(
        task_id="ledger_commit",
        bash_command=f"{CLI} ledger commit {sh(ENTRY)} --measurements {sh(MEASUREMENTS)} --out {sh(SYNTHETIC)} "
                     f"--table-ref {sh(TABLE_REF)}",
        env=LEDGER_ENV,
        append_env=True,
    )

    release = BashOperator(
        task_id="ledger_release",
        bash_command=(
            f"{{% set entry = {ENTRY} %}}"
            f"{{% if entry %}}{CLI} ledger release {sh('entry')} --if-reserved --note {sh(FAILED_NOTE)}"
            "{% else %}echo 'no ledger entry was reserved: nothing to release'{% endif %}"
        ),
        env=LEDGER_ENV,
        append_env=True,
        trigger_rule=TriggerRule.ONE_FAILED,
    )

    reserve >> choose >> [measure_dataflow, measure_spark] >> measured
    measured >> synthesize >> evaluate >> register >> commit
    # not after ledger_commit: the run's state is that of its leaves, and a failed run must end failed (ledger_commit
    # upstream_failed), not succeed with its cleanup. A failing commit leaves a spent entry, which nothing frees.
    [reserve, choose, measure_dataflow, measure_spark, measured, synthesize, evaluate, register] >> release
