"""jobs/airflow/dpbeam_dag.py in a real Airflow: it loads in a DagBag without import errors, its task graph is the
one the README describes (ids, edges, trigger rules, operator classes from the standard Google, Spark and standard
providers), and its templates render to the commands and arguments the jobs take (the ledger's entry id flowing from
``ledger_reserve`` into every later step, every shell argument quoted).

Airflow and its providers run from their own virtual environment (they pin a stack of their own), created on first
use under ``$DPBEAM_AIRFLOW_VENV`` (default ``/tmp/dpbeam-airflow``) and reused afterwards: Airflow's constraints
file when it can be fetched, else the pinned versions below. Creating it needs the package index (here: 19 minutes
wall, 263 s of CPU, on a shared 2-core machine under load 7-20, pip cache warm; 2.1 GB; see benchmarks/RESULTS.md);
without one these tests skip and say so. Reused, the module takes about 6 minutes here, most of it the two
dag.test() runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = ROOT / "jobs" / "airflow" / "dpbeam_dag.py"
# Airflow gives a DAG file 30 s to import; the test checks what the file defines, not how fast a loaded 2-core machine
# imports the providers (the import timed out once at load ~20), so it allows longer.
SLOW_MACHINE = {"AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "300"}
VENV = Path(os.environ.get("DPBEAM_AIRFLOW_VENV", "/tmp/dpbeam-airflow"))
AIRFLOW = "3.3.2"
PINS = [f"apache-airflow=={AIRFLOW}", "apache-airflow-providers-google==22.8.0",
        "apache-airflow-providers-apache-spark==6.3.4", "apache-airflow-providers-standard==1.21.0",
        "apache-airflow-providers-apache-beam==6.3.1"]  # the google provider's Dataflow hook imports the beam one
CONSTRAINTS = (f"https://raw.githubusercontent.com/apache/airflow/constraints-{AIRFLOW}/"
               f"constraints-{sys.version_info.major}.{sys.version_info.minor}.txt")
pytestmark = pytest.mark.slow

# Run inside the Airflow venv: load the DAG, describe its graph, render every task's templates with a stub context.
PROBE = r"""
import json, sys
try:
    from airflow.dag_processing.dagbag import DagBag  # Airflow 3.2+
except ImportError:
    from airflow.models.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])  # examples are off: AIRFLOW__CORE__LOAD_EXAMPLES
out = {"import_errors": {k: str(v)[-2000:] for k, v in bag.import_errors.items()}, "dags": sorted(bag.dag_ids)}
dag = bag.dags.get("dpbeam_release")
if dag is not None:
    class Ti:
        def xcom_pull(self, task_ids=None, **_):
            return {"ledger_reserve": ENTRY}.get(task_ids)
    class Conf(dict):
        pass
    config = {"project": "p", "region": "europe-west1", "ledger": "postgresql+psycopg://ledger@h/db",
              "cli": "/opt/dpbeam/bin/dpbeam", "flex_template": "gs://tpl/measure.json",
              "measure_service_account": "m@p.iam.gserviceaccount.com", "scratch": "gs://scratch",
              "spark_main": "/opt/dpbeam/jobs/spark_main.py", "jobs_zip": "/opt/dpbeam/jobs.zip",
              "synthesize_job": "dpbeam-synthesize", "evaluate_job": "dpbeam-evaluate", "artifacts": "gs://art",
              "synthetic": "gs://syn", "reports": "gs://rep", "bq_dataset": "p.synthetic"}
    class Json:
        dpbeam_config = type("Cfg", (), config)
    class Value:
        def get(self, key, default=None):
            return VARIABLES.get(key, default)
    ENTRY, VARIABLES = sys.argv[2] or None, json.loads(sys.argv[3])
    run_id = "scheduled__2025-01-02T00:00:00+00:00"
    ctx = {"params": {"spec": "gs://specs/it's.yaml", "name": "user-events", "engine": "dataflow"},
           "run_id": run_id, "ti": Ti(), "var": {"json": Json(), "value": Value()},
           "dag_run": type("Run", (), {"conf": Conf(json.loads(sys.argv[4]))})()}
    env = dag.get_template_env()
    def render(v):
        if isinstance(v, str):
            return env.from_string(v).render(**ctx)
        if isinstance(v, dict):
            return {k: render(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [render(x) for x in v]
        return v
    tasks = {}
    for t in dag.tasks:
        tasks[t.task_id] = {
            "class": type(t).__module__ + "." + type(t).__name__,
            "upstream": sorted(t.upstream_task_ids), "downstream": sorted(t.downstream_task_ids),
            "trigger_rule": str(getattr(t.trigger_rule, "value", t.trigger_rule)), "retries": t.retries,
            "rendered": {f: render(getattr(t, f)) for f in t.template_fields if getattr(t, f, None) is not None},
        }
    choose = dag.get_task("choose_engine")
    out["dag"] = {"schedule": str(dag.schedule if hasattr(dag, "schedule") else dag.timetable.summary),
                  "max_active_runs": dag.max_active_runs, "params": sorted(dag.params.keys()), "tasks": tasks,
                  "branch": choose.python_callable(**tasks["choose_engine"]["rendered"]["op_kwargs"])}
print(json.dumps(out, default=str))
"""


def airflow_python() -> Path:
    py = VENV / "bin" / "python"
    if not (VENV / "bin" / "airflow").exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True)
            pip = [str(py), "-m", "pip", "install", "-q"]
            constrained = [f"apache-airflow[google,apache-spark,apache-beam]=={AIRFLOW}", "-c", CONSTRAINTS,
                           "--retries", "1", "--timeout", "20"]  # Airflow's tested set, when its file is reachable
            if subprocess.run(pip + constrained, capture_output=True, timeout=1800).returncode != 0:
                subprocess.run(pip + PINS, check=True, capture_output=True, timeout=1800)  # else the pins above
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
            pytest.skip(f"could not create the Airflow venv at {VENV} (needs the package index): {err}")
    return py


def probe(tmp_path: Path, entry: str | None = "0123abcd" * 4, variables: dict | None = None,
          conf: dict | None = None) -> dict:
    home = tmp_path / "airflow-home"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "AIRFLOW_HOME": str(home),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent), **SLOW_MACHINE}
    proc = subprocess.run([str(airflow_python()), "-c", PROBE, str(DAG_FILE.parent), entry or "",
                           json.dumps(variables or {}), json.dumps(conf or {})],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict:
    return probe(tmp_path_factory.mktemp("airflow"))


def test_dag_loads_without_import_errors(loaded):
    assert loaded["import_errors"] == {} and loaded["dags"] == ["dpbeam_release"]
    dag = loaded["dag"]
    assert dag["max_active_runs"] == 1 and dag["params"] == ["engine", "name", "spec"]
    assert all(t["retries"] == 0 for t in dag["tasks"].values())  # a retried measure would need a new reservation


def test_task_graph_operators_and_trigger_rules(loaded):
    tasks = loaded["dag"]["tasks"]
    classes = {k: v["class"] for k, v in tasks.items()}
    assert classes == {
        "ledger_reserve": "airflow.providers.standard.operators.bash.BashOperator",
        "choose_engine": "airflow.providers.standard.operators.python.BranchPythonOperator",
        "measure_dataflow": "airflow.providers.google.cloud.operators.dataflow.DataflowStartFlexTemplateOperator",
        "measure_spark": "airflow.providers.apache.spark.operators.spark_submit.SparkSubmitOperator",
        "measured": "airflow.providers.standard.operators.empty.EmptyOperator",
        "synthesize": "airflow.providers.google.cloud.operators.cloud_run.CloudRunExecuteJobOperator",
        "evaluate": "airflow.providers.google.cloud.operators.cloud_run.CloudRunExecuteJobOperator",
        "register": "airflow.providers.google.cloud.operators.bigquery.BigQueryCreateTableOperator",
        "ledger_commit": "airflow.providers.standard.operators.bash.BashOperator",
        "ledger_release": "airflow.providers.standard.operators.bash.BashOperator",
    }
    down = {k: v["downstream"] for k, v in tasks.items()}
    chain = ["ledger_reserve", "choose_engine", "measured", "synthesize", "evaluate", "register", "ledger_commit"]
    for a, b in zip(chain, chain[1:]):
        if a == "choose_engine":
            assert down[a] == ["ledger_release", "measure_dataflow", "measure_spark"]
            assert down["measure_dataflow"] == down["measure_spark"] == ["ledger_release", "measured"]
        else:
            assert b in down[a], (a, b)
    # the cleanup watches every task before the commit (one failing anywhere fires it); the commit and the cleanup
    # are the leaves, so a failed run ends failed (see test_dag_test_runs_the_jobs_and_cleans_up_after_a_failure)
    assert tasks["ledger_release"]["upstream"] == sorted(set(tasks) - {"ledger_release", "ledger_commit"})
    assert down["ledger_release"] == [] and down["ledger_commit"] == []
    rules = {k: v["trigger_rule"] for k, v in tasks.items() if v["trigger_rule"] != "all_success"}
    assert rules == {"ledger_release": "one_failed", "measured": "none_failed_min_one_success"}


def test_templates_render_the_jobs_arguments(loaded):
    """The entry id of ledger_reserve reaches the measure jobs, the commit and the cleanup; the per-run folders are
    the same in every step; shell arguments are quoted (the spec's name holds a quote here)."""
    t = {k: v["rendered"] for k, v in loaded["dag"]["tasks"].items()}
    entry = "0123abcd" * 4
    meas = "gs://art/user-events/scheduled-2025-01-02t00-00-00-00-00/measurements"
    syn = "gs://syn/user-events/scheduled-2025-01-02t00-00-00-00-00"
    assert t["ledger_reserve"]["bash_command"] == "/opt/dpbeam/bin/dpbeam ledger reserve 'gs://specs/it'\"'\"'s.yaml'"
    launch = t["measure_dataflow"]["body"]["launchParameter"]
    assert launch["parameters"] == {"spec": "gs://specs/it's.yaml", "measurements_uri": meas, "ledger_entry": entry}
    assert launch["containerSpecGcsPath"] == "gs://tpl/measure.json"
    assert launch["environment"]["serviceAccountEmail"] == "m@p.iam.gserviceaccount.com"
    assert t["measure_spark"]["application"] == "/opt/dpbeam/jobs/spark_main.py"
    assert t["measure_spark"]["application_args"] == ["--spec", "gs://specs/it's.yaml", "--measurements-uri", meas,
                                                      "--ledger-entry", entry]
    assert t["synthesize"]["job_name"] == "dpbeam-synthesize"
    assert t["synthesize"]["overrides"] == {"container_overrides": [{"args": ["--measurements", meas, "--out", syn]}]}
    assert t["evaluate"]["job_name"] == "dpbeam-evaluate"
    assert t["evaluate"]["overrides"]["container_overrides"][0]["args"] == [
        "--spec", "gs://specs/it's.yaml", "--synth", syn, "--measurements", meas, "--report-out",
        "gs://rep/user-events/scheduled-2025-01-02t00-00-00-00-00"]
    table = "user_events_scheduled_2025_01_02t00_00_00_00_00"
    assert (t["register"]["project_id"], t["register"]["dataset_id"], t["register"]["table_id"]) == \
        ("p", "synthetic", table)
    assert t["register"]["table_resource"]["externalDataConfiguration"]["sourceUris"] == [f"{syn}/*.parquet"]
    assert t["ledger_commit"]["bash_command"] == (
        f"/opt/dpbeam/bin/dpbeam ledger commit {entry} --measurements {meas} --out {syn} "
        f"--table-ref '{{\"bigquery\": \"p.synthetic.{table}\"}}'")
    assert t["ledger_commit"]["env"] == t["ledger_release"]["env"] == {"DPBEAM_LEDGER": "postgresql+psycopg://ledger@h/db"}
    assert t["ledger_release"]["bash_command"] == (
        f"/opt/dpbeam/bin/dpbeam ledger release {entry} --if-reserved "
        "--note 'DAG run scheduled__2025-01-02T00:00:00+00:00 failed'")


def test_cleanup_without_a_reservation_and_engine_choice(tmp_path):
    """When ledger_reserve failed there is no entry: the cleanup says so instead of failing on 'None'. The engine:
    the run's config wins over the Variable dpbeam_engine, which wins over the param's default."""
    nothing = probe(tmp_path, entry=None, variables={"dpbeam_engine": "spark"})
    assert nothing["dag"]["tasks"]["ledger_release"]["rendered"]["bash_command"] == \
        "echo 'no ledger entry was reserved: nothing to release'"
    assert nothing["dag"]["branch"] == "measure_spark"
    assert probe(tmp_path, conf={"engine": "dataflow"}, variables={"dpbeam_engine": "spark"})["dag"]["branch"] == \
        "measure_dataflow"


def test_unknown_engine_is_refused_with_what_to_change():
    """choose_engine is plain Python: checked here without Airflow (the DAG module needs it, so read the function)."""
    import ast

    tree = ast.parse(DAG_FILE.read_text())
    ns: dict = {"ENGINES": ("dataflow", "spark")}
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "choose_engine")
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(DAG_FILE), "exec"), ns)
    assert ns["choose_engine"]("spark") == "measure_spark"
    with pytest.raises(ValueError, match="dpbeam_engine"):
        ns["choose_engine"]("flink")


# dag.test() in the Airflow venv, the remote operators' execute swapped for the entrypoint each one starts remotely:
# Dataflow -> jobs.beam_main (FnApiRunner) with the flex template's parameters; Cloud Run -> the job's module with its
# overridden args; BigQuery -> the table resource written to a file. The ledger tasks run the real `dpbeam` command.
DRIVE = r"""
import json, os, subprocess, sys
try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:
    from airflow.models.dagbag import DagBag
from airflow.providers.google.cloud.operators.bigquery import BigQueryCreateTableOperator
from airflow.providers.google.cloud.operators.cloud_run import CloudRunExecuteJobOperator
from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator

DPY, MODE, OUT = os.environ["DPBEAM_PYTHON"], sys.argv[2], sys.argv[3]

def run(module, *args):
    subprocess.run([DPY, "-m", module, *args], check=True)

def dataflow(self, context):
    if MODE == "launch_fails":
        raise RuntimeError("the flex template did not launch")
    params = self.body["launchParameter"]["parameters"]
    run("jobs.beam_main", *[f"--{k}={v}" for k, v in params.items()], "--runner", "FnApiRunner")

def cloud_run(self, context):
    args = self.overrides["container_overrides"][0]["args"]
    module = {"dpbeam-synthesize": "jobs.synthesize_main", "dpbeam-evaluate": "jobs.evaluate_main"}[self.job_name]
    run(module, *args, *(["--iters", "50"] if module == "jobs.synthesize_main" else []))

def bigquery(self, context):
    with open(os.path.join(OUT, "bigquery.json"), "w") as f:
        json.dump({"table": f"{self.project_id}.{self.dataset_id}.{self.table_id}", "resource": self.table_resource}, f)

DataflowStartFlexTemplateOperator.execute = dataflow
CloudRunExecuteJobOperator.execute = cloud_run
BigQueryCreateTableOperator.execute = bigquery
dag = DagBag(dag_folder=sys.argv[1]).dags["dpbeam_release"]
dr = dag.test(run_conf=json.loads(sys.argv[4]))
states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dr.get_task_instances()}
print(json.dumps({"run": str(getattr(dr.state, "value", dr.state)), "tasks": states, "run_id": dr.run_id}))
"""


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory) -> dict[str, str]:
    """An Airflow home with a migrated SQLite database, and the environment dag.test() runs in."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "AIRFLOW_HOME": str(home),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent), **SLOW_MACHINE,
           "DPBEAM_PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "SPARK_LOCAL_IP": "127.0.0.1",
           "JAX_PLATFORMS": "cpu"}
    airflow = airflow_python().parent / "airflow"
    proc = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return env


def dag_test(env: dict[str, str], lake: Path, mode: str, spec: Path) -> dict:
    cli = lake / "dpbeam"
    cli.write_text(f"#!/bin/sh\nexec {sys.executable} -m dpbeam.cli \"$@\"\n")
    cli.chmod(0o755)
    config = {"project": "p", "region": "r", "ledger": f"sqlite:///{lake}/ledger.db", "cli": str(cli),
              "flex_template": "gs://tpl/measure.json", "measure_service_account": "m@p", "scratch": f"{lake}/scratch",
              "spark_main": str(ROOT / "jobs" / "spark_main.py"), "jobs_zip": "jobs.zip",
              "synthesize_job": "dpbeam-synthesize", "evaluate_job": "dpbeam-evaluate", "artifacts": f"{lake}/art",
              "synthetic": f"{lake}/syn", "reports": f"{lake}/rep", "bq_dataset": "p.synthetic"}
    run_env = {**env, "AIRFLOW_VAR_DPBEAM_CONFIG": json.dumps(config)}
    proc = subprocess.run([str(airflow_python()), "-c", DRIVE, str(DAG_FILE.parent), mode, str(lake),
                           json.dumps({"spec": str(spec), "name": "survey"})],
                          capture_output=True, text=True, env=run_env, cwd=lake, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_dag_test_runs_the_jobs_and_cleans_up_after_a_failure(airflow_home, tmp_path):
    """The whole DAG under dag.test(): reserve -> Beam measure spending that entry -> synthesis -> evaluation ->
    register -> commit, the entry committed with the table; then a run whose measure job does not launch: the cleanup
    frees its reservation and the run ends failed."""
    import pyarrow.parquet as pq
    import yaml

    from dpbeam.privacy.ledger import Ledger
    from test_jobs import SPECS, survey_table

    lake = tmp_path / "lake"
    lake.mkdir()
    pq.write_table(survey_table(), lake / "survey.parquet")
    spec = yaml.safe_load((SPECS / "survey.yaml").read_text())
    spec.update(source={"uri": str(lake / "survey.parquet")}, output={"uri": str(lake / "unused")},
                ledger={"uri": f"sqlite:///{lake}/ledger.db", "dataset": "hr.survey"})
    (lake / "survey.yaml").write_text(yaml.safe_dump(spec))
    ledger = Ledger(f"sqlite:///{lake}/ledger.db")
    ledger.set_budget("hr.survey", "row", epsilon=10.0, delta=1e-6)

    ok = dag_test(airflow_home, lake, "ok", lake / "survey.yaml")
    assert ok["run"] == "success", ok
    assert {k for k, v in ok["tasks"].items() if v != "success"} == {"measure_spark", "ledger_release"}
    assert ok["tasks"]["measure_spark"] == ok["tasks"]["ledger_release"] == "skipped"
    [entry] = ledger.history("hr.survey")
    run = slug_of(ok["run_id"])
    assert entry["state"] == "committed" and entry["output_uri"] == f"{lake}/syn/survey/{run}"
    assert entry["measurements_uri"] == f"{lake}/art/survey/{run}/measurements"
    table = f"p.synthetic.survey_{run.replace('-', '_')}"
    assert json.loads(entry["table_ref"]) == {"bigquery": table}
    assert json.loads((lake / "bigquery.json").read_text())["table"] == table
    assert (lake / "rep" / "survey" / run / "report.html").exists()
    assert pq.read_table(f"{lake}/syn/survey/{run}").num_rows > 0

    failed = dag_test(airflow_home, lake, "launch_fails", lake / "survey.yaml")
    assert failed["run"] == "failed", failed
    assert failed["tasks"]["measure_dataflow"] == "failed" and failed["tasks"]["ledger_release"] == "success"
    assert failed["tasks"]["ledger_commit"] == "upstream_failed"
    second = ledger.history("hr.survey")[-1]
    assert second["state"] == "released" and failed["run_id"] in second["note"]
    assert ledger.budget("hr.survey").rho_used == pytest.approx(entry["rho"], rel=1e-12)  # the committed run only


def slug_of(run_id: str) -> str:
    """The DAG's slug filter (its module imports Airflow, so it is not imported here)."""
    import re

    return re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")[:63] or "run"
