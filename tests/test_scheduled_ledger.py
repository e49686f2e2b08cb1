"""A scheduler's steps around a run (dpbeam.scheduled, `dpbeam ledger reserve|commit|release --if-reserved`): the
reservation is the plan the job itself makes, from the spec alone; the measure job adopts it only if it was made for
the same spec and plan, and refuses otherwise before any row is read; commit checks the entry and the ledger;
the cleanup frees a reservation and leaves a spent or committed entry as it is."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_spec
from dpbeam.cli import app
from dpbeam.privacy.ledger import Ledger, LedgerError

runner = CliRunner()


def write_spec(tmp_path, url: str) -> str:
    """The ledger tests' tiny spec (public domains, no discovery) with a ledger section, written as YAML as a
    scheduler would."""
    spec = tiny_spec(tmp_path, url)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def cli(*args: str):
    r = runner.invoke(app, list(args))
    return r


@pytest.fixture()
def setup(tmp_path):
    url = f"sqlite:///{tmp_path}/l.db"
    Ledger(url).set_budget("users", "user_id", epsilon=5.0, delta=1e-6)
    return url, write_spec(tmp_path, url)


def reserve_cli(spec: str, *sets: str) -> str:
    r = cli("ledger", "reserve", spec, *[a for s in sets for a in ("--set", s)])
    assert r.exit_code == 0, r.output
    return r.stdout.strip().splitlines()[-1]


def test_reserve_is_the_jobs_own_plan(setup):
    """The entry holds the rho and delta that plan_job's accountant plans for the same spec (read from the files)."""
    from dpbeam.job import plan_job
    from dpbeam.scheduled import load_spec_uri

    url, spec = setup
    entry = reserve_cli(spec)
    row = Ledger(url).entry(entry)
    s = load_spec_uri(spec)
    plan = plan_job(s.model_copy(update={"ledger": None}))  # the job's plan, without reserving a second time
    assert row["state"] == "reserved" and row["dataset"] == "users" and row["spec_sha256"] == s.sha256()
    assert row["rho"] == plan.accountant.rho and row["delta_approx"] == plan.accountant.delta_reserved
    assert [e["id"] for e in Ledger(url).history("users")] == [entry]


def test_reserve_refused_prints_no_entry(tmp_path):
    """A budget that cannot afford the run: exit 2, the refusal says what is left, and stdout holds no id."""
    url = f"sqlite:///{tmp_path}/l.db"
    Ledger(url).set_budget("users", "user_id", epsilon=0.5, delta=1e-6)  # the spec asks for epsilon 1
    r = cli("ledger", "reserve", write_spec(tmp_path, url))
    assert r.exit_code == 2 and "is left" in r.output and r.stdout.strip() == ""
    assert Ledger(url).history("users") == []
    no_ledger = cli("ledger", "reserve", write_spec(tmp_path, url), "--set", "ledger=null")
    assert no_ledger.exit_code == 2 and "no ledger section" in no_ledger.output


def test_measure_adopts_the_entry_and_refuses_another_spec(setup, monkeypatch):
    """The measure step spends the scheduler's entry (no second one); a job run with another spec, or on an entry that
    is no longer reserved, is refused before any row is read."""
    from dpbeam import job
    from dpbeam.measurements import MeasurementsArtifact
    from dpbeam.scheduled import load_spec_uri
    from jobs.common import measure_to_artifact

    url, spec = setup
    entry = reserve_cli(spec)
    read = []
    real = job.run_aggregation
    monkeypatch.setattr(job, "run_aggregation", lambda *a, **k: read.append(1) or real(*a, **k))
    other = load_spec_uri(spec, {"privacy.epsilon": 2.0})
    with pytest.raises(LedgerError, match="reserved for spec"):
        measure_to_artifact(other, "local", None, False, ledger_entry=entry)
    assert read == [] and Ledger(url).entry(entry)["state"] == "reserved"

    target = measure_to_artifact(load_spec_uri(spec), "local", None, False, ledger_entry=entry)
    assert read and Ledger(url).entry(entry)["state"] == "spent"
    assert MeasurementsArtifact.read(target).manifest["lineage"]["ledger_entry"] == entry
    assert [e["id"] for e in Ledger(url).history("users")] == [entry]  # adopted, not a second reservation
    read.clear()
    with pytest.raises(LedgerError, match="is spent, not reserved"):
        measure_to_artifact(load_spec_uri(spec), "local", None, True, ledger_entry=entry)
    assert read == []


def test_commit_checks_entry_and_ledger_then_cleanup_leaves_it(setup, tmp_path):
    from dpbeam.scheduled import load_spec_uri
    from dpbeam.synth.synthesize import synthesize
    from jobs.common import measure_to_artifact

    url, spec = setup
    entry = reserve_cli(spec)
    meas = measure_to_artifact(load_spec_uri(spec), "local", None, False, ledger_entry=entry)
    out = str(tmp_path / "out")
    early = cli("ledger", "commit", entry, "--measurements", meas, "--out", out, "--ledger", url)
    assert early.exit_code == 2 and "run the synthesis step first" in early.output
    synthesize(meas, out, iters=10)
    wrong = cli("ledger", "commit", "0" * 32, "--measurements", meas, "--out", out, "--ledger", url)
    assert wrong.exit_code == 2 and f"belongs to ledger entry {entry}" in wrong.output
    elsewhere = f"sqlite:///{tmp_path}/other.db"
    moved = cli("ledger", "commit", entry, "--measurements", meas, "--out", out, "--ledger", elsewhere)
    assert moved.exit_code == 2 and "recorded in the ledger at" in moved.output
    ref = cli("ledger", "commit", entry, "--measurements", meas, "--out", out, "--ledger", url, "--table-ref", "[1]")
    assert ref.exit_code == 2 and "JSON object" in ref.output
    assert Ledger(url).entry(entry)["state"] == "spent"
    done = cli("ledger", "commit", entry, "--measurements", meas, "--out", out, "--ledger", url,
               "--table-ref", '{"bigquery": "p.d.t"}')
    assert done.exit_code == 0, done.output
    row = Ledger(url).entry(entry)
    assert row["state"] == "committed" and json.loads(row["table_ref"]) == {"bigquery": "p.d.t"}
    assert json.loads(row["statement"])["lineage"]["ledger_entry"] == entry
    # the DAG's cleanup after a later failure (say, of a task after commit) leaves a committed entry as it is
    kept = cli("ledger", "release", entry, "--if-reserved", "--ledger", url)
    assert kept.exit_code == 0 and "committed; left as it is" in kept.output
    assert Ledger(url).entry(entry)["state"] == "committed"


def test_cleanup_frees_a_reservation_keeps_a_spent_one_and_runs_twice(setup):
    url, spec = setup
    led = Ledger(url)
    entry = reserve_cli(spec)
    assert led.budget("users").rho_used > 0
    first = cli("ledger", "release", entry, "--if-reserved", "--ledger", url)
    assert first.exit_code == 0 and "is released" in first.output and led.budget("users").rho_used == 0.0
    again = cli("ledger", "release", entry, "--if-reserved", "--ledger", url)
    assert again.exit_code == 0 and led.entry(entry)["state"] == "released"
    spent = reserve_cli(spec)
    led.mark_spent(spent, "somewhere")
    kept = cli("ledger", "release", spent, "--if-reserved", "--ledger", url)
    assert kept.exit_code == 0 and "spent; left as it is" in kept.output and led.entry(spent)["state"] == "spent"
    both = cli("ledger", "release", spent, "--if-reserved", "--force", "--ledger", url)
    assert both.exit_code != 0 and led.entry(spent)["state"] == "spent"
    missing = cli("ledger", "release", "f" * 32, "--if-reserved", "--ledger", url)
    assert missing.exit_code == 2 and "does not exist" in missing.output
