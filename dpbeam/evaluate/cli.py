"""`dpbeam evaluate`, `dpbeam audit`, `dpbeam report`: evaluation for the data owner (NOT DP except the audit).

Registered on the main app by :mod:`dpbeam.cli`. Errors follow the main CLI's rule (one line, no data; ``--debug``
for the traceback on the trusted side).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from dpbeam.cli import DEBUG_HELP, _fail, _overrides, console

NOT_DP_LINE = "[yellow]not DP:[/] these figures compare with the real data; for the data owner, never for release"


def _groups(groups: Optional[str]) -> list[str]:
    return [g.strip() for g in groups.split(",") if g.strip()] if groups else []


def _print_headline(ev: dict) -> None:
    from dpbeam.evaluate.report import fmt
    from dpbeam.evaluate.run import headline

    console.print(NOT_DP_LINE)
    for k, v in headline(ev).items():
        console.print(f"  {k}: {fmt(v)}", highlight=False)


def evaluate(
    real: Path = typer.Argument(..., help="The real table: a job spec (YAML; its source is read) or a data path."),
    synth: str = typer.Argument(..., help="The synthetic table directory (with _release.json)."),
    measurements: Optional[str] = typer.Option(None, help="Its measurements artifact (default: SYNTH.measurements)."),
    holdout: Optional[str] = typer.Option(None, help="Real rows the synthesizer did not see (enables DCR and MIA)."),
    target: Optional[str] = typer.Option(None, help="Column to predict for utility (default: the last column)."),
    groups: Optional[str] = typer.Option(None, help="Comma-separated columns for fairness, e.g. sex,race."),
    out: Optional[Path] = typer.Option(None, help="Write the figures as JSON here."),
    debug: bool = typer.Option(False, help=DEBUG_HELP),
) -> None:
    """Fidelity, utility, fairness (and DCR/MIA with a holdout) of a synthetic table against the real one."""
    reporter = None
    try:
        from dpbeam.evaluate.data import read_real, read_release, read_table
        from dpbeam.evaluate.run import check_out_dir, evaluate_release
        from dpbeam.progress import RichReporter

        reporter = RichReporter(console)
        release = read_release(synth, measurements)
        if out:
            check_out_dir(out.parent, [synth, release.measurements_uri])
        names = release.domain.names
        table, _ = read_real(real, names)
        hold = read_table(holdout, names) if holdout else None
        ev, _plots = evaluate_release(table, release, hold, target, _groups(groups), reporter)
        if out:
            out.write_text(json.dumps(ev, indent=2, default=str) + "\n")
            console.print(f"[green]wrote[/] {out}")
        _print_headline(ev)
    except Exception as err:
        _fail(err, "evaluate", reporter, debug)


def audit(
    spec: Optional[Path] = typer.Argument(None, help="A job spec: audit at its epsilon, delta and k."),
    epsilon: Optional[float] = typer.Option(None, help="Claimed epsilon (default: the spec's, else 1)."),
    delta: Optional[float] = typer.Option(None, help="Claimed delta (default: the spec's, else 1e-9)."),
    k: Optional[int] = typer.Option(None, help="Rows per unit (default: the spec's k, else 1)."),
    runs: int = typer.Option(200_000, help="Noisy releases drawn per neighbouring table."),
    confidence: float = typer.Option(0.95, help="Confidence of the lower bound."),
    broken: bool = typer.Option(True, help="Also audit the broken variant (bounding off), which must fail."),
    workers: Optional[int] = typer.Option(None, help="Processes drawing noise (default: every CPU)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a spec field: KEY=VALUE, repeatable."),
    debug: bool = typer.Option(False, help=DEBUG_HELP),
) -> None:
    """Empirical lower bound on epsilon of dpbeam's measurement kernel (reads no data)."""
    reporter = None
    try:
        from dpbeam.evaluate.audit import run_audit
        from dpbeam.progress import RichReporter
        from dpbeam.spec import load_spec

        reporter = RichReporter(console)
        eps, dlt, kk = 1.0, 1e-9, 1
        if spec is not None:
            s = load_spec(spec, _overrides(set_))
            eps, dlt = s.privacy.epsilon, s.privacy.delta
            kk = s.privacy.k if s.privacy.max_rows_per_unit != "auto" else 1
        eps, dlt, kk = epsilon if epsilon is not None else eps, delta if delta is not None else dlt, k or kk
        failed = False
        for b in ((False, True) if broken else (False,)):
            r = run_audit(eps, dlt, k=kk, runs=runs, confidence=confidence, broken=b, workers=workers,
                          reporter=reporter)
            what = "broken variant (bounding off)" if b else "dpbeam"
            verdict = "[green]as expected[/]" if r.passed else "[bold red]UNEXPECTED[/]"
            console.print(f"{what}: epsilon >= {r.epsilon_lower_bound:.3f} with {r.confidence:.0%} confidence "
                          f"({r.runs_per_table:,} runs per table; claimed {r.claimed_epsilon:g}): {verdict}",
                          highlight=False)
            failed |= not r.passed
        if failed:
            raise typer.Exit(code=1)
    except typer.Exit:
        raise
    except Exception as err:
        _fail(err, "audit", reporter, debug)


def report(
    real: Path = typer.Argument(..., help="A job spec (YAML) or the real table's path."),
    synth: Optional[str] = typer.Argument(
        None, help="An existing synthetic table. Without it (and with a spec) the report makes its own evaluation "
        "run: holdout split, planted canaries, the job on the training part."),
    out: Path = typer.Option(Path("dpbeam-report"), help="Report directory (never inside a release)."),
    measurements: Optional[str] = typer.Option(None, help="SYNTH's measurements artifact (default: SYNTH.measurements)."),
    holdout: Optional[str] = typer.Option(None, help="With SYNTH: real rows it did not see (enables DCR and MIA)."),
    target: Optional[str] = typer.Option(None, help="Column to predict for utility (default: the last column)."),
    groups: Optional[str] = typer.Option(None, help="Comma-separated columns for fairness, e.g. sex,race."),
    canaries: int = typer.Option(20, help="Canary units planted in an evaluation run."),
    audit_runs: int = typer.Option(200_000, help="Noisy releases per table in the mechanism audit (0: skip it)."),
    engine: str = typer.Option("local", help="Engine of an evaluation run: local, beam or spark."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a spec field: KEY=VALUE, repeatable."),
    debug: bool = typer.Option(False, help=DEBUG_HELP),
) -> None:
    """One self-contained HTML report: release statement, privacy profile, fidelity, utility, fairness, MIA,
    canaries, audit."""
    reporter = None
    try:
        from dpbeam.errors import SpecError
        from dpbeam.evaluate.data import is_spec, read_real, read_release, read_table
        from dpbeam.evaluate.run import add_audits, check_out_dir, evaluate_release, evaluation_run, write_report
        from dpbeam.progress import RichReporter

        reporter = RichReporter(console)
        if synth is None:
            if not is_spec(real):
                raise SpecError("without a synthetic table the report needs a job spec (YAML) to make its own "
                                "evaluation run; give SYNTH or a spec")
            check_out_dir(out)
            ev, plots = evaluation_run(real, out, _overrides(set_), engine, canaries=canaries, target=target,
                                       groups=_groups(groups), reporter=reporter)
        else:
            release = read_release(synth, measurements)
            check_out_dir(out, [synth, release.measurements_uri])
            names = release.domain.names
            table, _ = read_real(real, names)
            hold = read_table(holdout, names) if holdout else None
            ev, plots = evaluate_release(table, release, hold, target, _groups(groups), reporter)
        if audit_runs:
            add_audits(ev, plots, audit_runs, reporter)
        path = write_report(out, ev, plots)
        console.print(f"[green]wrote[/] {path}")
        _print_headline(ev)
    except Exception as err:
        _fail(err, "report", reporter, debug)


def register(app: typer.Typer) -> None:
    for fn in (evaluate, audit, report):
        app.command(name=fn.__name__)(fn)
