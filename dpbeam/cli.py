"""`dpbeam` on the command line: demo, run, measure, synthesize."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer
import yaml
from rich.console import Console

from dpbeam.errors import DPBeamError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Differentially private synthetic tables.")
console = Console(stderr=True)


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


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(code=2)


def _report(statement: dict[str, Any], out: str) -> None:
    console.print(f"[green]wrote[/] {statement['synthesizer']['rows']:,} synthetic rows to {out}")
    console.print(statement["statement"])


@app.command()
def demo(
    out: Path = typer.Option(Path("dpbeam-demo"), help="Directory for the synthetic table and its measurements."),
    epsilon: float = typer.Option(1.0, help="Privacy budget epsilon (delta is 1e-9)."),
    overwrite: bool = typer.Option(False, help="Replace an earlier demo output."),
) -> None:
    """Run the whole job on the embedded UCI Adult table, in-process (local engine)."""
    from dpbeam.datasets import adult_dir

    run(
        adult_dir() / "adult.yaml",
        engine="local",
        overwrite=overwrite,
        set_=[f"output.uri={(out / 'adult-synthetic').resolve()}", f"privacy.epsilon={epsilon}"],
        engine_option=None,
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
) -> None:
    """Measure and synthesize: source table -> DP measurements -> synthetic Parquet table + release statement."""
    from dpbeam.job import run_job
    from dpbeam.progress import RichReporter
    from dpbeam.spec import load_spec

    try:
        overrides = _overrides(set_)
        if overwrite:
            overrides["output.overwrite"] = True
        job = load_spec(spec, overrides)
        statement = run_job(job, engine=engine, reporter=RichReporter(console), **_engine_options(engine_option))
    except DPBeamError as err:
        _fail(err)
    _report(statement, job.output.uri)


@app.command()
def measure(
    spec: Path = typer.Argument(..., help="Job spec (YAML)."),
    out: Optional[str] = typer.Option(None, help="Where to write the measurements (default: output.measurements_uri)."),
    engine: str = typer.Option("local", help="Where the trusted pass runs: local, beam or spark."),
    overwrite: bool = typer.Option(False, help="Replace existing measurements."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a spec field: KEY=VALUE, repeatable."),
    engine_option: Optional[List[str]] = typer.Option(None, "--engine-option", help="An engine option KEY=VALUE."),
) -> None:
    """The trusted half only: write the DP measurements artifact (no synthetic rows)."""
    from dpbeam import lake
    from dpbeam.job import measure as measure_job
    from dpbeam.job import plan_job
    from dpbeam.progress import RichReporter
    from dpbeam.spec import load_spec

    try:
        job = load_spec(spec, _overrides(set_))
        target = out or job.output.resolved_measurements_uri
        lake.check_output_free(target, overwrite, "measurements output")
        options = _engine_options(engine_option)
        plan = plan_job(job, check_outputs=False, engine=engine, **options)
        artifact = measure_job(plan, engine, reporter=RichReporter(console), **options)
        artifact.write(target, overwrite=overwrite)
    except DPBeamError as err:
        _fail(err)
    console.print(f"[green]wrote[/] measurements to {target}")
    console.print(json.dumps({k: artifact.privacy[k] for k in ("epsilon_spent", "delta", "rho_spent")}))


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
) -> None:
    """Post-processing only: measurements -> synthetic Parquet table + release statement."""
    from dpbeam.progress import RichReporter
    from dpbeam.synth.synthesize import synthesize as run_synthesis

    try:
        statement = run_synthesis(
            measurements, out, rows=rows, seed=seed, engine=engine, iters=iters, overwrite=overwrite,
            reporter=RichReporter(console),
        )
    except DPBeamError as err:
        _fail(err)
    _report(statement, out)


@app.command()
def init(
    source: str = typer.Argument(..., help="The sensitive table: a Parquet file, directory or glob, or CSV (any URI)."),
    unit: Optional[str] = typer.Option(
        None, help="The privacy-unit column (person, account, device id). Without it every row is its own unit."
    ),
    out: Path = typer.Option(Path("spec.yaml"), help="Where to write the spec."),
    format: Optional[str] = typer.Option(None, help="parquet or csv (default: from the file name)."),
    overwrite: bool = typer.Option(False, help="Replace an existing spec file."),
) -> None:
    """Write a commented job spec from the source's schema alone (no row is read): the first step of a new job."""
    from dpbeam.init_spec import write_init_spec

    try:
        write_init_spec(source, out, unit=unit, fmt=format, overwrite=overwrite)
    except DPBeamError as err:
        _fail(err)
    console.print(f"[green]wrote[/] {out}: review its comments (kinds, public domains, budget, output), then run "
                  f"`dpbeam run {out}`")


if __name__ == "__main__":  # pragma: no cover
    app()
