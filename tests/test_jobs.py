"""The scheduled entrypoints (jobs/), each run as a scheduler runs it: a subprocess with the same arguments, on a
small table shaped like the example specs (jobs/specs/). Beam on the FnApiRunner, Spark on local[2], synthesis on
the CPU; the ledger steps as the Airflow DAG runs them (reserve, the measure job spends that entry, commit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "jobs" / "specs"
pytestmark = pytest.mark.slow


def events_table(n: int = 1500, users: int = 200, seed: int = 0) -> pa.Table:
    """Rows shaped like jobs/specs/user_events.yaml: several events per user."""
    rng = np.random.default_rng(seed)
    events = ["page_view", "search", "add_to_cart", "checkout", "purchase", "refund", "login", "logout"]
    t = np.datetime64("2025-01-01") + rng.integers(0, 365 * 24, n).astype("timedelta64[h]")
    cols = {
        "user_id": pa.array(rng.integers(0, users, n)),
        "event_type": pa.array(rng.choice(events, n)),
        "platform": pa.array(rng.choice(["web", "ios", "android"], n)),
        "country": pa.array(rng.choice(["US", "GB", "DE", "NZ"], n)),  # NZ is outside the spec's values: "other"
        "session_seconds": pa.array(rng.integers(0, 3000, n)),
        "revenue": pa.array(np.round(rng.exponential(30, n), 2)),
        "event_time": pa.array(t.astype("datetime64[us]"), type=pa.timestamp("us")),
        "is_new_user": pa.array(rng.random(n) < 0.2),
    }
    return pa.table(cols, schema=pa.schema([pa.field(k, v.type, nullable=False) for k, v in cols.items()]))


def survey_table(n: int = 800, seed: int = 1) -> pa.Table:
    """Rows shaped like jobs/specs/survey.yaml: one row per respondent."""
    rng = np.random.default_rng(seed)
    s = np.datetime64("2025-03-01") + rng.integers(0, 31, n).astype("timedelta64[D]")
    cols = {
        "department": pa.array(rng.choice(["engineering", "sales", "support", "finance"], n)),
        "age": pa.array(rng.integers(18, 70, n)),
        "tenure_years": pa.array(rng.uniform(0, 30, n)),
        "remote": pa.array(rng.choice(["onsite", "hybrid", "remote"], n)),
        "satisfaction": pa.array(rng.integers(1, 6, n)),
        "would_recommend": pa.array(rng.integers(0, 11, n)),
        "manager_support": pa.array(rng.integers(1, 6, n)),
        "intends_to_stay": pa.array(rng.random(n) < 0.7),
        "submitted": pa.array(s.astype("datetime64[us]"), type=pa.timestamp("us")),
    }
    return pa.table(cols, schema=pa.schema([pa.field(k, v.type, nullable=False) for k, v in cols.items()]))


def run_main(module: str, *args: str, script: bool = False) -> subprocess.CompletedProcess:
    """``python -m module args`` (or ``python path/to/module.py args`` with ``script``, as spark-submit runs a
    file), from a foreign working directory, with only the environment a scheduler would give."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPARK_LOCAL_IP": "127.0.0.1", "JAX_PLATFORMS": "cpu"}
    head = [sys.executable, str(ROOT / (module.replace(".", "/") + ".py"))] if script else [sys.executable, "-m", module]
    return subprocess.run(head + list(args), capture_output=True, text=True, env=env, cwd="/", timeout=900)


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-4000:]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``dpbeam ...`` as a scheduler's BashOperator runs it (``python -m dpbeam.cli``, the console script's target)."""
    return run_main("dpbeam.cli", *args)


def test_scheduled_run_on_beam_as_the_dag_runs_it(tmp_path):
    """The DAG's steps (jobs/airflow/dpbeam_dag.py) as subprocesses, with the ledger in the loop:
    `dpbeam ledger reserve` (reserved) -> beam_main --ledger_entry (spent) -> synthesize_main -> evaluate_main (a
    NOT-DP report in a trusted folder, no figure printed) -> `dpbeam ledger commit` (committed)."""
    from dpbeam.measurements import MeasurementsArtifact
    from dpbeam.privacy.ledger import Ledger

    src = tmp_path / "events.parquet"
    pq.write_table(events_table(), src)
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(ledger_url).set_budget("analytics.user_events", "user_id", epsilon=3.0, delta=1e-8)
    # the spec as the scheduler's bucket holds it: its own source, outputs and ledger
    spec = yaml.safe_load((SPECS / "user_events.yaml").read_text())
    spec["source"] = {"uri": str(src)}
    spec["output"].update(uri=str(tmp_path / "unused"), measurements_uri=str(tmp_path / "unused.measurements"))
    spec["ledger"]["uri"] = ledger_url
    spec["synthesizer"]["iters"] = 50
    spec_path = tmp_path / "specs" / "user_events.yaml"
    spec_path.parent.mkdir()
    spec_path.write_text(yaml.safe_dump(spec))
    meas, out = tmp_path / "artifacts" / "run-1" / "measurements", tmp_path / "synthetic" / "run-1"

    reserved = run_cli("ledger", "reserve", str(spec_path))
    ok(reserved)
    entry = reserved.stdout.strip().splitlines()[-1]  # what the BashOperator pushes to XCom
    ledger = Ledger(ledger_url)
    assert ledger.entry(entry)["state"] == "reserved"

    proc = run_main(
        "jobs.beam_main", f"--spec={spec_path}", f"--measurements_uri={meas}", f"--ledger_entry={entry}",
        # what a flex template's launcher appends, for the local runner
        "--runner", "FnApiRunner", "--temp_location", str(tmp_path / "tmp"), "--job_name", "dpbeam-events",
    )
    ok(proc)
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert printed == {"epsilon": 1.0, "delta": 1e-9, "rho": pytest.approx(ledger.entry(entry)["rho"], rel=1e-12)}
    artifact = MeasurementsArtifact.read(str(meas))
    assert artifact.manifest["engine"] == "beam" and artifact.manifest["spec_name"] == "user-events-daily"
    assert artifact.manifest["lineage"]["ledger_entry"] == entry
    assert ledger.entry(entry)["state"] == "spent" and [e["id"] for e in ledger.history("analytics.user_events")] \
        == [entry]  # the job spent the scheduler's entry; it reserved none of its own

    ok(run_main("jobs.synthesize_main", "--measurements", str(meas), "--out", str(out), "--iters", "50",
                "--statement-out", str(tmp_path / "statement.json")))
    table = pq.read_table(out)
    assert table.column_names == list(artifact.domain.names)
    assert set(table.column("event_type").to_pylist()) <= {
        "page_view", "search", "add_to_cart", "checkout", "purchase", "refund", "login", "logout", "__other__"}  # the spec's values and its other code
    statement = json.loads((tmp_path / "statement.json").read_text())
    assert statement["epsilon"] == 1.0 and statement["privacy_unit"] == "column user_id"
    assert ledger.entry(entry)["state"] == "spent"  # synthesis is post-processing: it does not touch the ledger

    inside = run_main("jobs.evaluate_main", "--spec", str(spec_path), "--synth", str(out), "--measurements",
                      str(meas), "--report-out", str(out / "report"))
    assert inside.returncode == 2 and "never travel with one" in inside.stderr and not (out / "report").exists()
    report = tmp_path / "trusted" / "reports" / "run-1"
    evaluated = run_main("jobs.evaluate_main", "--spec", str(spec_path), "--synth", str(out), "--measurements",
                         str(meas), "--report-out", str(report), "--target", "is_new_user")
    ok(evaluated)
    ev = json.loads((report / "evaluation.json").read_text())
    assert "fidelity" in ev and (report / "report.html").stat().st_size > 0 and (report / "_SUCCESS").exists()
    # the figures compare with real data: none reaches the logs, only where the report went
    assert evaluated.stdout == "" and evaluated.stderr.strip() == \
        f"wrote the evaluation report (not DP, for the data owner) to {report}"

    committed = run_cli("ledger", "commit", entry, "--measurements", str(meas), "--out", str(out),
                        "--table-ref", '{"bigquery": "p.synthetic.user_events_run_1"}', "--ledger", ledger_url)
    ok(committed)
    row = ledger.entry(entry)
    assert row["state"] == "committed" and row["output_uri"] == str(out) and row["measurements_uri"] == str(meas)
    assert json.loads(row["table_ref"]) == {"bigquery": "p.synthetic.user_events_run_1"}
    # the DAG's cleanup, had a later task failed, and the old register step both leave a committed entry alone
    ok(run_cli("ledger", "release", entry, "--if-reserved", "--ledger", ledger_url))
    again = run_main("jobs.register_main", "--ledger", ledger_url, "--measurements", str(meas), "--out", str(out))
    assert again.returncode == 2 and "is committed; it cannot be committed" in again.stderr
    assert ledger.entry(entry)["state"] == "committed"


def test_spark_main_as_spark_submit_runs_it(tmp_path):
    """spark-submit runs the file as a script; here on local[2] over a folder of Parquet files."""
    from dpbeam.measurements import MeasurementsArtifact

    src = tmp_path / "survey"
    src.mkdir()
    table = survey_table()
    pq.write_table(table.slice(0, 400), src / "part-0.parquet")
    pq.write_table(table.slice(400), src / "part-1.parquet")
    meas = tmp_path / "measurements"
    proc = run_main("jobs.spark_main", "--spec", str(SPECS / "survey.yaml"), "--master", "local[2]",
                    "--set", f"source.uri={src}", "--set", f"output.uri={tmp_path / 'out'}",
                    "--measurements-uri", str(meas), script=True)
    ok(proc)
    artifact = MeasurementsArtifact.read(str(meas))
    assert artifact.manifest["engine"] == "spark" and artifact.manifest["spec_name"] == "engagement-survey"
    assert artifact.privacy["epsilon"] == 2.0 and "lineage" not in artifact.manifest  # this spec has no ledger


def test_entrypoint_errors_are_one_line_and_quote_no_data(tmp_path):
    """A bad spec fails before any budget with dpbeam's own message and status 2; a bad Beam option likewise."""
    src = tmp_path / "survey.parquet"
    pq.write_table(survey_table(50), src)
    proc = run_main("jobs.beam_main", "--spec", str(SPECS / "survey.yaml"), "--set", f"source.uri={src}",
                    "--set", f"output.uri={tmp_path / 'o'}", "--set", "columns.department.kind=colour",
                    "--runner", "FnApiRunner")
    assert proc.returncode == 2 and "department" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_main("jobs.beam_main", "--spec", str(SPECS / "survey.yaml"), "--no_such_option", "1")
    assert proc.returncode == 2 and "no_such_option" in proc.stderr
    proc = run_main("jobs.synthesize_main", "--measurements", str(tmp_path / "missing"), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = path.read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


@pytest.mark.parametrize("name", ["flex-template.Dockerfile", "synthesis.Dockerfile", "evaluate.Dockerfile"])
def test_dockerfiles_copy_what_exists_and_run_what_imports(name):
    """Not built here (no registry): every COPY source exists in the repository, every extra installed exists in
    pyproject.toml, and what the image runs (its ENTRYPOINT module, or the flex template's main file) imports."""
    import importlib
    import re
    import tomllib

    steps = dockerfile_instructions(ROOT / "jobs" / "docker" / name)
    assert steps[0][0] == "FROM" and all(op in {"FROM", "COPY", "WORKDIR", "RUN", "ENV", "ENTRYPOINT"} for op, _ in steps)
    for op, args in steps:
        if op == "COPY" and not args.startswith("--from"):
            for src in args.split()[:-1]:
                assert (ROOT / src).exists(), f"{name}: COPY {src} does not exist"
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for op, args in steps:
        for group in re.findall(r'"\.\[([a-z,]+)\]"', args) if op == "RUN" else []:
            assert set(group.split(",")) <= extras, f"{name}: unknown extra in {group}"
    env = dict(a.split("=", 1) for op, a in steps if op == "ENV")
    entry = json.loads(next(a for op, a in steps if op == "ENTRYPOINT"))
    if "FLEX_TEMPLATE_PYTHON_PY_FILE" in env:
        main = Path(env["FLEX_TEMPLATE_PYTHON_PY_FILE"]).relative_to(env["PYTHONPATH"])
        assert (ROOT / main).is_file()
        module = ".".join(main.with_suffix("").parts)
    else:
        assert entry[:2] == ["python", "-m"]
        module = entry[2]
    assert callable(importlib.import_module(module).main)
