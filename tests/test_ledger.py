"""The privacy ledger: budgets, refusals that say what is left, races on SQLite and on a real PostgreSQL, and the job's
reserve -> spend -> commit (or release) with lineage between the artifact, the table and the ledger entry."""

from __future__ import annotations

import glob
import json
import math
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import tiny_spec
from dpbeam.errors import OutputExistsError
from dpbeam.measurements import MeasurementsArtifact
from dpbeam.privacy.accountant import epsilon_for, rho_for
from dpbeam.privacy.ledger import Ledger, LedgerBudgetError, LedgerError
from dpbeam.spec import parse_spec

HERE = os.path.dirname(__file__)
RACERS = 4


# ----------------------------------------------------------------------------------------------------------------------
# A real PostgreSQL, started by the suite


def _pg_bindir() -> str | None:
    found = shutil.which("pg_ctl")
    if found:
        return os.path.dirname(os.path.realpath(found))
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))  # Debian keeps them off PATH
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """initdb + pg_ctl in a temporary directory, on a loopback port. PostgreSQL refuses to run as root, so as root
    (CI) the server runs as the ``postgres`` system user that Debian's package creates."""
    bindir = _pg_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries (pg_ctl) not found: .ci/run installs Debian's postgresql package")
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    base = tempfile.mkdtemp(prefix="dpbeam-pg-")  # not under pytest's tmp_path: that is private to root
    os.chmod(base, 0o755)
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root needs a 'postgres' system user to run PostgreSQL (Debian's package makes it)")
        shutil.chown(base, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(base, "data"), _free_port()
    subprocess.run(as_user + [f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)
    subprocess.run(as_user + [f"{bindir}/pg_ctl", "-D", data, "-w", "-l", os.path.join(base, "log"), "-o",
                              f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------------
# Budgets and the race


def _race(url: str, tmp_path) -> None:
    """RACERS processes race for the last third of a budget: exactly one wins, and the ledger sums exactly."""
    ledger = Ledger(url)
    total = rho_for(1.0, 1e-6)
    run = total / 3 * (1 - 1e-6)  # three runs fit, a fourth does not
    ledger.set_budget("users", "user_id", epsilon=1.0, delta=1e-6)
    for _ in range(2):
        r = ledger.reserve("users", "user_id", rho=run, delta_approx=0.0, epsilon=0.5, delta=1e-6,
                           spec_sha256="s" * 64)
        r.mark_spent("m")
        r.commit({"spec_sha256": "s" * 64}, "o", "m")
    start = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "ledger_race_worker.py"), url, "users", repr(run),
                               str(start)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(RACERS)]
    for p in procs:  # every racer has imported and connected before the start
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    start.write_text("go")
    outcomes = [p.communicate(timeout=120)[0].strip() for p in procs]
    won = [o for o in outcomes if o.startswith("won")]
    assert len(won) == 1, outcomes
    assert all(o.startswith("refused") and "is left" in o for o in outcomes if not o.startswith("won"))
    b = ledger.budget("users")
    assert b.rho_used == math.fsum([run] * 3)
    states = sorted(e["state"] for e in ledger.history("users"))
    assert states == ["committed", "committed", "reserved"]
    assert won[0].split()[1] == [e["id"] for e in ledger.history("users") if e["state"] == "reserved"][0]


def test_race_sqlite(tmp_path):
    _race(f"sqlite:///{tmp_path}/ledger.db", tmp_path)


def test_race_postgresql(postgres_url, tmp_path):
    _race(postgres_url, tmp_path)


def test_refusal_says_what_is_left(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path}/l.db")
    ledger.set_budget("users", "user_id", epsilon=1.0, delta=1e-6)
    need = rho_for(0.8, 1e-6)
    ledger.reserve("users", "user_id", need, 0.0, 0.8, 1e-6, "a" * 64)
    with pytest.raises(LedgerBudgetError) as err:
        ledger.reserve("users", "user_id", need, 0.0, 0.8, 1e-6, "a" * 64)
    left = rho_for(1.0, 1e-6) - need
    assert f"rho {left:.6g} is left" in str(err.value)
    assert f"at most {epsilon_for(left, 1e-6):.4g}" in str(err.value)
    assert len(ledger.history("users")) == 1  # the refused run left no entry


def test_period_budget_and_delta_for_thresholds(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path}/l.db")
    ledger.set_budget("users", "user_id", epsilon=4.0, delta=1e-6, period_days=30, period_epsilon=1.0)
    one = rho_for(0.9, 1e-6)
    ledger.reserve("users", "user_id", one, 0.0, 0.9, 1e-6, "a" * 64)
    with pytest.raises(LedgerBudgetError, match="30-day budget"):
        ledger.reserve("users", "user_id", one, 0.0, 0.9, 1e-6, "a" * 64)
    # a run setting aside delta for thresholds leaves less delta to convert the rest with
    ledger.set_budget("users", "user_id", epsilon=4.0, delta=1e-6)
    with pytest.raises(LedgerBudgetError, match="lifetime budget"):
        ledger.reserve("users", "user_id", 1e-9, 1e-6, 0.1, 2e-6, "a" * 64)


def test_expired_reservation_stops_counting(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path}/l.db", ttl_s=0.2)
    ledger.set_budget("users", "user_id", epsilon=1.0, delta=1e-6)
    most = rho_for(1.0, 1e-6) * 0.9
    stale = ledger.reserve("users", "user_id", most, 0.0, 0.9, 1e-6, "a" * 64)
    with pytest.raises(LedgerBudgetError):
        ledger.reserve("users", "user_id", most, 0.0, 0.9, 1e-6, "a" * 64)
    time.sleep(0.3)
    ledger.reserve("users", "user_id", most, 0.0, 0.9, 1e-6, "a" * 64)
    assert ledger.entry(stale.entry)["state"] == "expired"
    # the stale run wakes up with measurements: the budget no longer allows it, so it may not go on
    with pytest.raises(LedgerBudgetError, match="outlived its reservation"):
        stale.mark_spent("m")


def test_spec_changed_between_reserve_and_commit(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path}/l.db")
    ledger.set_budget("users", "user_id", epsilon=1.0, delta=1e-6)
    r = ledger.reserve("users", "user_id", 0.001, 0.0, 0.1, 1e-6, "a" * 64)
    r.mark_spent("m")
    with pytest.raises(LedgerError, match="spec changed between reservation and commit"):
        r.commit({"spec_sha256": "b" * 64}, "o", "m")
    assert ledger.entry(r.entry)["state"] == "spent"  # still counts: its measurements exist
    assert ledger.budget("users").rho_used == 0.001


def test_same_name_other_unit_and_release_rules(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path}/l.db")
    ledger.set_budget("users", "user_id", epsilon=1.0, delta=1e-6)
    with pytest.raises(LedgerError, match="privacy unit 'user_id', not 'row'"):
        ledger.reserve("users", "row", 0.001, 0.0, 0.1, 1e-6, "a" * 64)
    with pytest.raises(LedgerError, match="privacy unit"):
        ledger.set_budget("users", "account_id", epsilon=1.0, delta=1e-6)
    r = ledger.reserve("users", "user_id", 0.001, 0.0, 0.1, 1e-6, "a" * 64)
    r.mark_spent("m")
    with pytest.raises(LedgerError, match="--force"):
        ledger.release(r.entry, "by hand")
    ledger.release(r.entry, "never published", force=True)
    assert ledger.budget("users").rho_used == 0.0


def test_unreachable_ledger_refuses(tmp_path):
    with pytest.raises(LedgerError, match="cannot be reached"):
        Ledger(f"sqlite:///{tmp_path}/no/such/dir/l.db")
    with pytest.raises(LedgerError, match="cannot be reached") as err:
        Ledger(f"postgresql+psycopg://u:secret@127.0.0.1:{_free_port()}/x")
    assert "secret" not in str(err.value)


# ----------------------------------------------------------------------------------------------------------------------
# The job


def test_job_reserves_commits_and_links(tmp_path):
    from dpbeam.job import run_job

    url = f"sqlite:///{tmp_path}/l.db"
    ledger = Ledger(url)
    spec = parse_spec(tiny_spec(tmp_path, url))
    rho = rho_for(1.0, 1e-6)
    ledger.set_budget("users", "user_id", epsilon=epsilon_for(rho * 1.5, 1e-6), delta=1e-6)  # one run fits, two not
    statement = run_job(spec)
    [entry] = ledger.history("users")
    assert entry["state"] == "committed" and entry["rho"] == pytest.approx(rho, rel=1e-12)
    assert entry["spec_sha256"] == spec.sha256() == statement["spec_sha256"]
    # lineage: the table's statement -> the ledger entry -> the table and the artifact -> the ledger entry
    assert statement["lineage"]["ledger_entry"] == entry["id"]
    assert entry["output_uri"] == spec.output.uri and entry["measurements_uri"] == spec.output.resolved_measurements_uri
    assert json.loads(entry["statement"])["lineage"]["ledger_entry"] == entry["id"]
    artifact = MeasurementsArtifact.read(spec.output.resolved_measurements_uri)
    assert artifact.manifest["lineage"]["ledger_entry"] == entry["id"]
    readme = (tmp_path / "out" / "_README.md").read_text()
    assert statement["statement"] in readme and entry["id"] in readme
    # the second run does not fit: refused before any row is read, and says what is left
    with pytest.raises(LedgerBudgetError, match="is left"):
        run_job(parse_spec(tiny_spec(tmp_path, url, overwrite=True)))
    assert len(ledger.history("users")) == 1


def test_job_bad_input_refused_before_data(tmp_path, monkeypatch):
    from dpbeam import job

    read = []
    monkeypatch.setattr(job, "run_aggregation", lambda *a, **k: read.append(1) or (_ for _ in ()).throw(
        RuntimeError("boom")))
    url = f"sqlite:///{tmp_path}/l.db"
    # unreachable ledger, no budget for the dataset, another privacy unit under the same name
    with pytest.raises(LedgerError, match="cannot be reached"):
        job.run_job(parse_spec(tiny_spec(tmp_path, f"sqlite:///{tmp_path}/missing/l.db")))
    with pytest.raises(LedgerError, match="has no budget"):
        job.run_job(parse_spec(tiny_spec(tmp_path, url)))
    ledger = Ledger(url)
    ledger.set_budget("users", "row", epsilon=5.0, delta=1e-6)
    with pytest.raises(LedgerError, match="privacy unit 'row', not 'user_id'"):
        job.run_job(parse_spec(tiny_spec(tmp_path, url)))
    ledger.set_budget("other", "user_id", epsilon=5.0, delta=1e-6)
    spec = tiny_spec(tmp_path, url)
    spec["ledger"]["dataset"] = "other"
    # output exists: refused by the output check, before the ledger is asked
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    with pytest.raises(OutputExistsError):
        job.run_job(parse_spec(spec))
    assert ledger.history("other") == []
    shutil.rmtree(tmp_path / "out")
    # a failure before any measurement exists frees the reservation
    with pytest.raises(RuntimeError, match="boom"):
        job.run_job(parse_spec(spec))
    assert [e["state"] for e in ledger.history("other")] == ["released"]
    assert ledger.budget("other").rho_used == 0.0
    assert len(read) == 1  # only the last attempt reached the data


def test_cli(tmp_path):
    from typer.testing import CliRunner

    from dpbeam.cli import app

    runner = CliRunner()
    url = f"sqlite:///{tmp_path}/l.db"
    ok = runner.invoke(app, ["ledger", "set-budget", "users", "--unit", "user_id", "--epsilon", "1", "--delta", "1e-6",
                             "--ledger", url])
    assert ok.exit_code == 0, ok.output
    r = Ledger(url).reserve("users", "user_id", 0.01, 0.0, 0.5, 1e-6, "a" * 64)
    shown = runner.invoke(app, ["ledger", "show", "users", "--json", "--ledger", url])
    assert shown.exit_code == 0 and json.loads(shown.output)[0]["rho_used"] == 0.01
    hist = runner.invoke(app, ["ledger", "history", "users", "--json", "--ledger", url])
    assert [e["state"] for e in json.loads(hist.output)] == ["reserved"]
    freed = runner.invoke(app, ["ledger", "release", r.entry, "--ledger", url])
    assert freed.exit_code == 0 and Ledger(url).budget("users").rho_used == 0.0
    again = runner.invoke(app, ["ledger", "release", r.entry, "--ledger", url])
    assert again.exit_code == 2 and "is released" in again.output
