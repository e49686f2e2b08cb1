"""What a scheduler needs from dpbeam when a run's halves run apart (Airflow, Cloud Scheduler, cron): the spec read
from a URI, the run's budget reserved in the ledger from the spec alone, that reservation adopted by the measure job,
and the release committed once the synthetic table exists.

A scheduled run moves one ledger entry through its states (see :mod:`dpbeam.privacy.ledger`):

    dpbeam ledger reserve SPEC          reserved   before any job starts; prints the entry id (the scheduler keeps it)
    measure job --ledger-entry ID       spent      the measure job adopts the entry instead of reserving its own
    dpbeam ledger commit ID ...         committed  after synthesis, with the table's release statement
    dpbeam ledger release ID --if-reserved         on failure: frees the entry if no measurement exists

Nothing here reads raw data: the reservation is the spec's planned rho (what the budget guarantees), computed from
the spec alone, so the scheduler's host needs the ledger and the spec, not the lake's raw bucket.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from dpbeam.errors import SpecError


def load_spec_uri(uri: str, overrides: dict[str, Any] | None = None):
    """The spec at ``uri`` (a local path or any fsspec URI). A local spec resolves relative paths against its own
    folder (as ``dpbeam run``); a remote spec must name its source and outputs by absolute URIs, since a worker's
    working directory means nothing to the job."""
    from dpbeam.spec import _is_local, apply_overrides, load_spec, parse_spec

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


def _need_ledger(spec: Any) -> None:
    if spec.ledger is None:
        raise SpecError(f"spec {spec.name!r} has no ledger section; a scheduled run with a reservation needs "
                        "`ledger: {uri: ..., dataset: ...}` in the spec")


def reserve(spec: Any):
    """Reserve ``spec``'s planned budget in its ledger (``spec.ledger``) and return the
    :class:`~dpbeam.privacy.ledger.Reservation`. The same plan :func:`dpbeam.job.plan_job` makes, from the spec
    alone; refused (with what is left) if the dataset's budget cannot afford it. Reads no data."""
    from dpbeam.job import plan_budget
    from dpbeam.privacy.ledger import reserve_for

    _need_ledger(spec)
    return reserve_for(spec, plan_budget(spec))


def adopt(spec: Any, accountant: Any, entry: str):
    """The reservation ``entry`` (made by :func:`reserve` for this very spec) as the measure job's own, after
    checking, before any row is read, that it is still live and that it was made for this spec, dataset and plan
    (the same spec hash, rho and delta set aside): a job never spends more than its entry holds."""
    from dpbeam.privacy.ledger import Ledger, LedgerError, Reservation

    _need_ledger(spec)
    ledger = Ledger(spec.ledger.uri, ttl_s=spec.ledger.reservation_ttl_s)
    row = ledger.entry(entry)
    if row["state"] != "reserved":
        raise LedgerError(f"ledger entry {entry} is {row['state']}, not reserved; reserve a new one with "
                          "`dpbeam ledger reserve SPEC`")
    if row["dataset"] != spec.ledger.dataset:
        raise LedgerError(f"ledger entry {entry} belongs to dataset {row['dataset']!r}, not the spec's "
                          f"{spec.ledger.dataset!r}")
    if row["spec_sha256"] != spec.sha256():
        raise LedgerError(f"ledger entry {entry} was reserved for spec {row['spec_sha256'][:12]}, and this job runs "
                          f"spec {spec.sha256()[:12]}; pass the same spec and --set overrides to reserve and measure")
    if not (math.isclose(row["rho"], accountant.rho, rel_tol=1e-12)
            and math.isclose(row["delta_approx"], accountant.delta_reserved, rel_tol=1e-12, abs_tol=0.0)):
        raise LedgerError(f"ledger entry {entry} holds another budget plan than this job's (a different dpbeam "
                          "version planned it); reserve again with the same version")
    return Reservation(ledger, entry, spec.ledger.dataset, spec.sha256())


def commit(ledger_url: str, measurements: str, out: str, entry: str | None = None,
           table_ref: dict[str, Any] | None = None) -> str:
    """Commit the ledger entry of the artifact at ``measurements`` with the release statement of the table at
    ``out`` (its ``_release.json``) and, if given, where the table was registered (``table_ref``). ``entry``, when
    given, must be the one the artifact names. Returns the entry id. Reads no raw data."""
    from dpbeam import lake
    from dpbeam.privacy.ledger import Ledger, LedgerError, redact

    manifest = lake.read_json(measurements, "manifest.json")
    lineage = manifest.get("lineage") or {}
    named = lineage.get("ledger_entry")
    if named is None:
        raise SpecError(f"the artifact at {measurements} was made without a ledger (its spec has no ledger section); "
                        "there is no entry to commit")
    if entry is not None and entry != named:
        raise LedgerError(f"the artifact at {measurements} belongs to ledger entry {named}, not {entry}")
    if lineage.get("ledger") not in (None, redact(ledger_url)):
        raise LedgerError(f"the artifact at {measurements} was recorded in the ledger at {lineage['ledger']}, not "
                          f"{redact(ledger_url)}; pass that ledger's URL")
    if not lake.holds_something(out):
        raise SpecError(f"{out} holds no committed table; run the synthesis step first")
    statement = lake.read_json(out, "_release.json")
    ledger = Ledger(ledger_url)
    try:
        ledger.commit(named, manifest["spec_sha256"], out, measurements, table_ref, statement)
    finally:
        ledger.close()
    return named


def release_if_reserved(ledger_url: str, entry: str, note: str) -> str:
    """A failed run's cleanup: free ``entry`` if it is still only reserved (or expired), and return the state it is
    left in. A spent or committed entry is left as it is (its measurements exist: it counts for good), so this is
    safe to run after any failure, and twice."""
    from dpbeam.privacy.ledger import Ledger, LedgerError

    ledger = Ledger(ledger_url)
    try:
        state = ledger.entry(entry)["state"]
        if state in ("reserved", "expired"):
            try:
                ledger.release(entry, note)
            except LedgerError:  # the measure job marked it spent meanwhile; say what it is now
                pass
            state = ledger.entry(entry)["state"]
        return state
    finally:
        ledger.close()
