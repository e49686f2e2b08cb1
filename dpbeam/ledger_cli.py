"""`dpbeam ledger ...`: budgets and releases of the privacy ledger (:mod:`dpbeam.privacy.ledger`).

Every command takes the ledger's SQLAlchemy URL (``--ledger`` or the ``DPBEAM_LEDGER`` environment variable), except
``reserve``, which uses the spec's ``ledger.uri`` (the ledger its measure job will use). ``reserve``, ``commit`` and
``release --if-reserved`` are a scheduler's steps around a run (:mod:`dpbeam.scheduled`).
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

ledger_app = typer.Typer(no_args_is_help=True, help="The privacy ledger: budgets per dataset and every release.")
out = Console()
err = Console(stderr=True)

LEDGER = typer.Option(..., "--ledger", envvar="DPBEAM_LEDGER",
                      help="The ledger's SQLAlchemy URL, e.g. sqlite:///ledger.db or postgresql+psycopg://host/db.")


def _open(url: str):
    from dpbeam.privacy.ledger import Ledger

    return Ledger(url)


def _guard(fn):
    """Print a dpbeam error as one line and exit 2 (the ledger's errors carry no data)."""
    import functools

    from dpbeam.errors import DPBeamError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DPBeamError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2)

    return wrapper


def _when(t: float | None) -> str:
    return "" if t is None else _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


@ledger_app.command()
@_guard
def show(
    dataset: Optional[str] = typer.Argument(None, help="A dataset (default: every dataset)."),
    ledger: str = LEDGER,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Budgets: what each dataset may spend, has spent (committed, spent and live reservations) and has left."""
    led = _open(ledger)
    budgets = [led.budget(d) for d in ([dataset] if dataset else led.datasets())]
    if as_json:
        out.print_json(json.dumps([b.to_json() for b in budgets]))
        return
    table = Table("dataset", "privacy unit", "epsilon", "delta", "rho total", "rho used", "rho left", "period")
    for b in budgets:
        period = "" if b.period_epsilon is None else \
            f"epsilon {b.period_epsilon:g} per {b.period_days:g} days (rho left {b.period_rho_left:.6g})"
        table.add_row(b.dataset, b.privacy_unit, f"{b.epsilon:g}", f"{b.delta:g}", f"{b.rho_total:.6g}",
                      f"{b.rho_used:.6g}", f"{b.rho_left:.6g}", period)
    out.print(table)


@ledger_app.command()
@_guard
def history(
    dataset: str = typer.Argument(..., help="The dataset."),
    ledger: str = LEDGER,
    as_json: bool = typer.Option(False, "--json", help="Print JSON (with each release's statement)."),
) -> None:
    """Every run of a dataset: state, epsilon, delta, rho, times, spec hash, code version, output URIs."""
    rows = _open(ledger).history(dataset)
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table("entry", "state", "epsilon", "delta", "rho", "created", "finished", "spec", "code", "output")
    for r in rows:
        table.add_row(r["id"], r["state"], f"{r['epsilon']:g}", f"{r['delta']:g}", f"{r['rho']:.6g}",
                      _when(r["created"]), _when(r["finished"]), r["spec_sha256"][:12], r["code_version"],
                      r["output_uri"] or "")
    out.print(table)


@ledger_app.command("set-budget")
@_guard
def set_budget(
    dataset: str = typer.Argument(..., help="The dataset (the name specs give as ledger.dataset)."),
    unit: str = typer.Option(..., help="Its privacy unit: a column name, or 'row'. Fixed once set."),
    epsilon: float = typer.Option(..., help="Lifetime epsilon of all releases together."),
    delta: float = typer.Option(..., help="Lifetime delta."),
    period_days: Optional[float] = typer.Option(None, help="Also limit any window of this many days ..."),
    period_epsilon: Optional[float] = typer.Option(None, help="... to this epsilon."),
    ledger: str = LEDGER,
) -> None:
    """Create or change a dataset's budget."""
    b = _open(ledger).set_budget(dataset, unit, epsilon, delta, period_days, period_epsilon)
    out.print(f"dataset {b.dataset}: epsilon {b.epsilon:g}, delta {b.delta:g}; rho left {b.rho_left:.6g}")


@ledger_app.command()
@_guard
def release(
    entry: str = typer.Argument(..., help="A ledger entry id (from `dpbeam ledger history`)."),
    note: str = typer.Option("released by hand", help="Why (kept in the ledger)."),
    force: bool = typer.Option(False, help="Also free a spent entry: only if its measurements were never released."),
    if_reserved: bool = typer.Option(False, "--if-reserved",
                                     help="A scheduler's cleanup: free the entry only if it is still reserved; leave "
                                     "a spent or committed one as it is, and succeed either way."),
    ledger: str = LEDGER,
) -> None:
    """Free a run's reservation (a run that died before its measurements existed)."""
    if if_reserved:
        if force:
            raise typer.BadParameter("--if-reserved and --force exclude each other")
        from dpbeam.scheduled import release_if_reserved

        state = release_if_reserved(ledger, entry, note)
        out.print(f"ledger entry {entry} is {state}" + ("" if state == "released" else "; left as it is"))
        return
    _open(ledger).release(entry, note, force=force)
    out.print(f"released {entry}")


@ledger_app.command()
@_guard
def reserve(
    spec: str = typer.Argument(..., help="The job spec's URI (local path, gs://, s3://) with a ledger section."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a spec field: KEY=VALUE, repeatable "
                                             "(pass the same to the measure job)."),
) -> None:
    """Reserve a scheduled run's budget in the spec's ledger before any job starts, from the spec alone (no data
    read). Prints the entry id alone on stdout: give it to the measure job (--ledger-entry) and to
    `dpbeam ledger commit` / `release --if-reserved`."""
    import sys

    from dpbeam.cli import _overrides
    from dpbeam.scheduled import load_spec_uri
    from dpbeam.scheduled import reserve as reserve_run

    r = reserve_run(load_spec_uri(spec, _overrides(set_)))
    err.print(f"reserved ledger entry {r.entry} of dataset {r.dataset}", highlight=False)
    print(r.entry, file=sys.stdout)


@ledger_app.command()
@_guard
def commit(
    entry: str = typer.Argument(..., help="The entry `dpbeam ledger reserve` printed."),
    measurements: str = typer.Option(..., help="The measurements artifact's URI (its manifest names the entry)."),
    out_uri: str = typer.Option(..., "--out", help="The committed synthetic table's URI (with _release.json)."),
    table_ref: Optional[str] = typer.Option(None, help="Where the table was registered, as JSON "
                                            "(e.g. '{\"bigquery\": \"project.dataset.table\"}'); kept in the ledger."),
    ledger: str = LEDGER,
) -> None:
    """Commit a run's entry with its table's release statement: the last step of a scheduled run."""
    from dpbeam.errors import SpecError
    from dpbeam.scheduled import commit as commit_run

    ref = None
    if table_ref is not None:
        try:
            ref = json.loads(table_ref)
        except json.JSONDecodeError:
            raise SpecError(f"--table-ref must be a JSON object; got {table_ref!r}") from None
        if not isinstance(ref, dict):
            raise SpecError(f"--table-ref must be a JSON object; got {table_ref!r}")
    commit_run(ledger, measurements, out_uri, entry, ref)
    out.print(f"committed {entry}")
