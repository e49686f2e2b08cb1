"""What the entrypoints share: the measure jobs' options and their handling (the spec read from a URI, ``--set``,
the ledger entry a scheduler reserved), the trusted pass that writes the measurements artifact, and the one-line
error report.

A scheduler passes the spec as a URI (``gs://bucket/specs/events.yaml`` or a local path). The entrypoints print
only what the CLI prints: where the artifact went and the budget's (epsilon, delta, rho), never a count or value.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

import yaml

from dpbeam.errors import DPBeamError, SpecError, worker_error
from dpbeam.progress import Reporter
from dpbeam.scheduled import load_spec_uri

EXIT_ERROR = 2

__all__ = ["EXIT_ERROR", "add_measure_args", "fail", "load_spec_uri", "measure_from_args", "measure_to_artifact",
           "parse_sets"]


def parse_sets(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` spec overrides (``privacy.epsilon=0.5``), values parsed as YAML, as the CLI's ``--set``."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SpecError(f"--set takes KEY=VALUE (e.g. privacy.epsilon=0.5); got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def add_measure_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every measure job takes (Beam's and Spark's), with both spellings of the multi-word ones
    (``--measurements-uri`` and Beam's habit ``--measurements_uri``)."""
    p.add_argument("--spec", required=True, help="The job spec's URI (local path, gs://, s3://).")
    p.add_argument("--measurements-uri", "--measurements_uri", dest="measurements_uri", default=None,
                   help="Where to write the artifact (default: the spec's output.measurements_uri).")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing artifact.")
    p.add_argument("--set", dest="sets", action="append", default=[], help="Override a spec field: KEY=VALUE.")
    p.add_argument("--partitions", type=int, default=None, help="Shuffle partitions of unit-level stages.")
    p.add_argument("--ledger-entry", "--ledger_entry", dest="ledger_entry", default=None,
                   help="Spend this ledger entry (from `dpbeam ledger reserve SPEC`, same --set) instead of "
                   "reserving one: a scheduler's run. Default: the job reserves its own if the spec has a ledger.")
    p.add_argument("--debug", action="store_true", help="Raise with the full traceback (trusted side only).")
    return p


def measure_from_args(args: argparse.Namespace, engine: str, options: dict[str, Any]) -> str:
    """Run a measure job from its parsed :func:`add_measure_args` options and its engine's ``options``."""
    if args.partitions is not None:
        options["partitions"] = args.partitions
    spec = load_spec_uri(args.spec, parse_sets(args.sets))
    return measure_to_artifact(spec, engine, args.measurements_uri, args.overwrite, ledger_entry=args.ledger_entry,
                               **options)


def measure_to_artifact(spec, engine: str, out: str | None, overwrite: bool, ledger_entry: str | None = None,
                        **options: Any) -> str:
    """Plan (every check, no budget), run the trusted pass on ``engine`` and write the measurements artifact to
    ``out`` (default the spec's ``output.measurements_uri``). With a ledger in the spec, the run's budget is
    reserved before any row is read (or, with ``ledger_entry``, the scheduler's reservation is checked and adopted,
    see :func:`dpbeam.scheduled.adopt`) and marked spent once measurements exist (see :func:`dpbeam.job.measure`);
    the entry is committed after synthesis (``dpbeam ledger commit``, or ``jobs.register_main``). Returns the
    artifact's URI."""
    from dpbeam import lake
    from dpbeam.job import measure, plan_job

    target = out or spec.output.resolved_measurements_uri
    lake.check_output_free(target, overwrite or spec.output.overwrite, "measurements output")
    if ledger_entry is None:
        plan = plan_job(spec, check_outputs=False, engine=engine, **options)
    else:
        from dpbeam.scheduled import adopt

        if spec.ledger is None:
            raise SpecError("--ledger-entry needs a spec with a ledger section (the ledger the entry is in)")
        # plan without the ledger (no second reservation), then hold the scheduler's entry, checked against the plan
        plan = plan_job(spec.model_copy(update={"ledger": None}), check_outputs=False, engine=engine, **options)
        plan.spec = spec
        plan.reservation = adopt(spec, plan.accountant, ledger_entry)
    artifact = measure(plan, engine, reporter=Reporter(), **options)
    artifact.write(target, overwrite=overwrite or spec.output.overwrite)
    print(f"wrote measurements to {target}", file=sys.stderr)
    print(json.dumps({k: artifact.privacy[k] for k in ("epsilon", "delta", "rho")}))  # the budget's, not spent
    return target


def fail(err: BaseException, entrypoint: str, debug: bool = False) -> int:
    """Print one line for ``err`` and return the exit status. dpbeam's own errors (also when an engine's worker
    raised them) say what to change; any other error prints a generic line, never its text, which may quote data.
    ``debug`` re-raises instead, for the trusted side's operator."""
    if debug:
        raise err
    own = err if isinstance(err, DPBeamError) else worker_error(err)
    if own is not None:
        print(f"error: {own}", file=sys.stderr)
    else:
        print(f"error: internal error in {entrypoint}; rerun with --debug on the trusted side",
              file=sys.stderr)
    return EXIT_ERROR
