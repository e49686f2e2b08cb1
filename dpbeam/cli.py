"""`dpbeam` on the command line: demo, run, measure, synthesize.

Every command catches every exception and prints one line: dpbeam's own errors say which field, column or file is at
fault and what to change; anything else prints a generic line naming the stage, never the exception's text, which may
quote data (Arrow, Spark and Beam errors do). ``--debug`` prints the full traceback instead, for the trusted side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from dpbeam.errors import DPBeamError, worker_error
from dpbeam.progress import Reporter

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Differentially private synthetic tables.")
console = Console(stderr=True)

from dpbeam.ledger_cli import ledger_app  # noqa: E402

app.add_typer(ledger_app, name="ledger")


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set takes KEY=VALUE (e.g. privacy.epsilon=0.5); got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def _engine_options(pairs: list[str] | None) -> dict[str, Any]:
    return _overrides(pairs)


DEBUG_HELP = "On an error, print the full traceback (it may quote data: use it on the trusted side only)."
VERBOSE_HELP = "Print the time each stage took (durations only, for the operator's console; never counts)."


def _fail(err: Exception, command: str, reporter: Reporter | None, debug: bool) -> None:
    """Print one line for ``err`` (or the traceback with ``debug``) and exit with status 2."""
    if debug:
        console.print_exception(show_locals=False)
        raise typer.Exit(code=2)
    own = err if isinstance(err, DPBeamError) else worker_error(err)
    if own is not None:
        console.print(f"[bold red]error:[/] {escape(str(own))}", highlight=False, soft_wrap=True)
    else:
        stage = reporter.current_stage if reporter is not None and reporter.current_stage else None
        where = f"`dpbeam {command}`" + (f" ({stage})" if stage else "")
        console.print(f"[bold red]error:[/] internal error in {where}; rerun with --debug on the trusted side",
                      highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _report(statement: dict[str, Any], out: str) -> None:
    console.print(f"[green]wrote[/] {statement['synthesizer']['rows']:,} synthetic rows to {out}")
    console.print(statement["statement"])


@app.command()
def demo(
    out: Path = typer.Option(Path("dpbeam-demo"), help="Directory for the synthetic table and its measurements."),
    epsilon: float = typer.Option(1.0, help="Privacy budget epsilon (delta is 1e-9)."),
    overwrite: bool = typer.Option(False, help="Replace an earlier demo output."),
    debug: bool = typer.Option(False, help=DEBUG_HELP),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Run the whole job on the embedded UCI Adult table, in-process (local engine)."""
    try:
        from dpbeam.datasets import adult_dir

        spec = adult_dir() / "adult.yaml"
    except Exception as err:
        _fail(err, "demo", None, debug)
    run(
        spec,
        engine="local",
        overwrite=overwrite,
        set_=[f"output.uri={(out / 'adult-synthetic').resolve()}", f"privacy.epsilon={epsilon}"],
        engine_option=None,
        debug=debug,
        verbose=verbose,
    )


@app.command()
def run(
    spec: Path = typer.Argument(..., help="Job spec (YAML)."),
    engine: str = typer.Option("local", help="Where the trusted pass runs: local, beam or spark."),
    overwrite: bool = typer.Option(False, help="Replace existing output (same as output.overwrite: true)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a spec field: KEY=VALUE, repeatable."),
    engine_option: Optional[List[str]] = typer.Option(
        None, "--engine-option", help="An engine option KEY=VALUE (e.g. runner=FnApiRunner, master=local[2])."
    ),
    debug: bool = typer.Option(False, help=DEBUG_HELP),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Measure and synthesize: source table -> DP measurements -> synthetic Parquet table + release statement."""
    overrides = _overrides(set_)
    if overwrite:
        overrides["output.overwrite"] = True
    options = _engine_options(engine_option)
    reporter = None
    try:
        from dpbeam.job import run_job
        from dpbeam.progress import RichReporter
        from dpbeam.spec import load_spec

        reporter = RichReporter(console, verbose=verbose)
        job = load_spec(spec, overrides)
        statement = run_job(job, engine=engine, reporter=reporter, **options)
        _report(statement, job.output.uri)
    except Exception as err:
        _fail(err, "run", reporter, debug)


@app.command()
def measure(
    spec: Path = typer.Argument(..., help="Job spec (YAML)."),
    out: Optional[str] = typer.Option(None, help="Where to write the measurements (default: output.measurements_uri)."),
    engine: str = typer.Option("local", help="Where the trusted pass runs: local, beam or spark."),
    overwrite: bool = typer.Option(False, help="Replace existing measurements."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a spec field: KEY=VALUE, repeatable."),
    engine_option: Optional[List[str]] = typer.Option(None, "--engine-option", help="An engine option KEY=VALUE."),
    debug: bool = typer.Option(False, help=DEBUG_HELP),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """The trusted half only: write the DP measurements artifact (no synthetic rows)."""
    overrides = _overrides(set_)
    options = _engine_options(engine_option)
    reporter = None
    try:
        from dpbeam import lake
        from dpbeam.job import measure as measure_job
        from dpbeam.job import plan_job
        from dpbeam.progress import RichReporter
        from dpbeam.spec import load_spec

        reporter = RichReporter(console, verbose=verbose)
        job = load_spec(spec, overrides)
        target = out or job.output.resolved_measurements_uri
        lake.check_output_free(target, overwrite, "measurements output")
        plan = plan_job(job, check_outputs=False, engine=engine, **options)
        artifact = measure_job(plan, engine, reporter=reporter, **options)
        artifact.write(target, overwrite=overwrite)
        console.print(f"[green]wrote[/] measurements to {target}")
        console.print(json.dumps({k: artifact.privacy[k] for k in ("epsilon", "delta", "rho")}))  # the budget's
        reporter.report_timings()
    except Exception as err:
        _fail(err, "measure", reporter, debug)


@app.command()
def synthesize(
    measurements: str = typer.Argument(..., help="A measurements artifact directory (from `dpbeam measure`)."),
    out: str = typer.Option(..., help="Where to write the synthetic table."),
    rows: Optional[int] = typer.Option(None, help="Rows to generate (default: the DP estimate of the source's)."),
    seed: int = typer.Option(0, help="Seed for sampling (not for privacy noise)."),
    engine: str = typer.Option(
        "auto",
        help="Synthesis engine: pgm (Private-PGM), torch (relaxed projection; GPU when available) or auto (pgm while "
        "its junction tree is small, torch otherwise).",
    ),
    iters: int = typer.Option(1000, help="Optimization iterations."),
    overwrite: bool = typer.Option(False, help="Replace an existing table."),
    debug: bool = typer.Option(False, help=DEBUG_HELP),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Post-processing only: measurements -> synthetic Parquet table + release statement."""
    reporter = None
    try:
        from dpbeam.progress import RichReporter
        from dpbeam.synth.synthesize import synthesize as run_synthesis

        reporter = RichReporter(console, verbose=verbose)
        statement = run_synthesis(
            measurements, out, rows=rows, seed=seed, engine=engine, iters=iters, overwrite=overwrite,
            reporter=reporter,
        )
        _report(statement, out)
        reporter.report_timings()
    except Exception as err:
        _fail(err, "synthesize", reporter, debug)


@app.command()
def init(
    source: str = typer.Argument(..., help="The sensitive table: a Parquet file, directory or glob, or CSV (any URI)."),
    unit: Optional[str] = typer.Option(
        None, help="The privacy-unit column (person, account, device id). Without it every row is its own unit."
    ),
    out: Path = typer.Option(Path("spec.yaml"), help="Where to write the spec."),
    format: Optional[str] = typer.Option(None, help="parquet or csv (default: from the file name)."),
    overwrite: bool = typer.Option(False, help="Replace an existing spec file."),
    debug: bool = typer.Option(False, help=DEBUG_HELP),
) -> None:
    """Write a commented job spec from the source's schema alone (no row is read): the first step of a new job."""
    try:
        from dpbeam.init_spec import write_init_spec

        write_init_spec(source, out, unit=unit, fmt=format, overwrite=overwrite)
        console.print(f"[green]wrote[/] {out}: review its comments (kinds, public domains, budget, output), then run "
                      f"`dpbeam run {out}`")
    except Exception as err:
        _fail(err, "init", None, debug)


if __name__ == "__main__":  # pragma: no cover
    # `python -m dpbeam.cli`: run the importable module's app, which registers the evaluate commands; registering them
    # from this __main__ copy too would import dpbeam.evaluate.cli halfway through a second copy of this module
    from dpbeam.cli import app as _app

    _app()
else:
    from dpbeam.evaluate.cli import register as _register_evaluate

    _register_evaluate(app)
