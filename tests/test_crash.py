"""kill -9 a job mid-write or mid-read: no partial table is visible at the output URI or in the Iceberg/Delta table,
the ledger entry is held (measurements existed) or expires (they did not), and a rerun succeeds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from dpbeam import lake
from dpbeam.privacy.accountant import epsilon_for, rho_for
from dpbeam.privacy.ledger import Ledger
from dpbeam.spec import parse_spec
from test_ledger import tiny_spec

HERE = os.path.dirname(__file__)


def kill_when_there(spec: dict, where: str, tmp_path) -> None:
    spec_file, flag = tmp_path / f"spec-{where}.json", tmp_path / f"flag-{where}"
    spec_file.write_text(json.dumps(spec))
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "crash_job.py"), str(spec_file), where, str(flag)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_kill_mid_write_iceberg(tmp_path):
    from dpbeam.job import run_job
    from pyiceberg.catalog.sql import SqlCatalog

    url = f"sqlite:///{tmp_path}/l.db"
    Ledger(url).set_budget("users", "user_id", epsilon=epsilon_for(rho_for(1.0, 1e-6) * 2.5, 1e-6), delta=1e-6)
    table = {"format": "iceberg", "catalog_uri": f"sqlite:///{tmp_path}/catalog.db",
             "warehouse": f"file://{tmp_path}/warehouse", "identifier": "dp.users"}
    spec = tiny_spec(tmp_path, url, max_rows_per_file=50, table=table)
    kill_when_there(spec, "write", tmp_path)
    out = tmp_path / "out"
    hidden = [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
    assert hidden and any(p.name.startswith("part-") for p in hidden[0].iterdir())  # it was killed mid-write ...
    assert not out.exists()  # ... and nothing is visible at the output URI
    catalog = SqlCatalog(lake.ICEBERG_CATALOG, uri=table["catalog_uri"], warehouse=table["warehouse"])
    assert not catalog.table_exists("dp.users")
    [killed] = Ledger(url).history("users")
    assert killed["state"] == "spent"  # its measurements were written: the budget stays spent
    # the rerun succeeds; it replaces the killed run's measurements artifact, which the ledger still counts
    statement = run_job(parse_spec({**spec, "output": {**spec["output"], "overwrite": True}}))
    tbl = catalog.load_table("dp.users")
    assert tbl.scan().to_arrow().num_rows == 200 == lake.read_dataset(str(out)).count_rows()
    assert tbl.properties["dpbeam.ledger_entry"] == statement["lineage"]["ledger_entry"]
    assert [e["state"] for e in Ledger(url).history("users")] == ["spent", "committed"]


def test_kill_mid_read_delta_reservation_expires(tmp_path):
    from deltalake import DeltaTable
    from dpbeam.job import run_job

    url = f"sqlite:///{tmp_path}/l.db"
    Ledger(url).set_budget("users", "user_id", epsilon=epsilon_for(rho_for(1.0, 1e-6) * 1.5, 1e-6), delta=1e-6)
    spec = tiny_spec(tmp_path, url, table={"format": "delta"})
    spec["ledger"]["reservation_ttl_s"] = 1.0
    kill_when_there(spec, "measure", tmp_path)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.measurements").exists()
    assert not (tmp_path / "out.delta").exists()
    [killed] = Ledger(url).history("users")
    assert killed["state"] == "reserved"  # held until it expires: only one run fits the budget
    time.sleep(max(0.0, killed["expires"] - time.time()) + 0.1)
    run_job(parse_spec(spec))  # the rerun succeeds once the reservation expired
    assert DeltaTable(str(tmp_path / "out.delta")).to_pyarrow_table().num_rows == 200
    assert [e["state"] for e in Ledger(url).history("users")] == ["expired", "committed"]
