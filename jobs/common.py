"""What the entrypoints share: the spec read from a URI, the trusted pass that writes the measurements artifact,
and the one-line error report.

A scheduler passes the spec as a URI (``gs://bucket/specs/events.yaml`` or a local path). The entrypoints print
only what the CLI prints: where the artifact went and the budget's (epsilon, delta, rho), never a count or value.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence

import yaml

from dpbeam.errors import DPBeamError, SpecError, worker_error
from dpbeam.progress import Reporter

EXIT_ERROR = 2


def parse_sets(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` spec overrides (``privacy.epsilon=0.5``), values parsed as YAML, as the CLI's ``--set``."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SpecError(f"--set takes KEY=VALUE (e.g. privacy.epsilon=0.5); got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def load_spec_uri(uri: str, overrides: dict[str, Any] | None = None):
    """The spec at ``uri`` (a local path or any fsspec URI). A local spec resolves relative paths against its own
    folder (as ``dpbeam run``); a remote spec must name its source and outputs by absolute URIs, since a worker's
    working directory means nothing to the job."""
    from dpbeam.spec import apply_overrides, load_spec, parse_spec

    if _is_local(uri):
        return load_spec(uri.removeprefix("file://"), overrides)
    from dpbeam import lake

    fs, path = lake.filesystem(uri)
    if not fs.exists(path):
        raise SpecError(f"spec {uri} does not exist; check --spec")
    try:
        data = yaml.safe_load(fs.cat_file(path).decode())
    except yaml.YAMLError as err:
        raise SpecError(f"spec {uri} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SpecError(f"spec {uri} must hold a mapping with source, privacy, columns and output")
    apply_overrides(data, overrides)
    for field, value in (("source.uri", data.get("source", {}).get("uri")),
                         ("output.uri", data.get("output", {}).get("uri")),
                         ("output.measurements_uri", data.get("output", {}).get("measurements_uri"))):
        if value is not None and _is_local(str(value)):
            raise SpecError(f"spec {uri} is remote, so {field} must be an absolute URI (gs://..., s3://...), "
                            f"not the local path {value!r}")
    return parse_spec(data)


def measure_to_artifact(spec, engine: str, out: str | None, overwrite: bool, **options: Any) -> str:
    """Plan (every check, no budget), run the trusted pass on ``engine`` and write the measurements artifact to
    ``out`` (default the spec's ``output.measurements_uri``). With a ledger in the spec, the run's budget is
    reserved before any row is read and marked spent once measurements exist (see :func:`dpbeam.job.measure`);
    the entry is committed by the synthesis step's caller (``dpbeam ledger commit``, or the DAG's register task).
    Returns the artifact's URI."""
    from dpbeam import lake
    from dpbeam.job import measure, plan_job

    target = out or spec.output.resolved_measurements_uri
    lake.check_output_free(target, overwrite or spec.output.overwrite, "measurements output")
    plan = plan_job(spec, check_outputs=False, engine=engine, **options)
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
