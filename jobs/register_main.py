"""Register a release in the ledger: the last step of a scheduled run whose halves ran apart (measure on Dataflow or
Spark, synthesize on a GPU job). The measurements step reserved the run's budget before reading a row and marked it
spent once the measurements existed; this step commits the entry with the synthetic table's release statement.

    python -m jobs.register_main --ledger postgresql+psycopg://... --measurements gs://.../measurements \\
        --out gs://synthetic/events

The ledger entry is the one the artifact's manifest names (``lineage.ledger_entry``); the ledger refuses the commit
if the artifact came from another spec than the one reserved for. The statement is read from the table's
``_release.json``. Nothing here touches raw data.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from jobs.common import fail


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobs.register_main", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--ledger", required=True, help="The ledger's SQLAlchemy URL (the spec's ledger.uri).")
    p.add_argument("--measurements", required=True, help="The measurements artifact's URI.")
    p.add_argument("--out", required=True, help="The committed synthetic table's URI.")
    p.add_argument("--debug", action="store_true", help="Raise with the full traceback.")
    return p


def register(ledger_url: str, measurements: str, out: str) -> str:
    """Commit the ledger entry of ``measurements`` with the statement of the table at ``out``; return its id."""
    from dpbeam import lake
    from dpbeam.errors import SpecError
    from dpbeam.privacy.ledger import Ledger

    manifest = lake.read_json(measurements, "manifest.json")
    entry = (manifest.get("lineage") or {}).get("ledger_entry")
    if entry is None:
        raise SpecError(f"the artifact at {measurements} was made without a ledger (its spec has no ledger section); "
                        "there is no entry to register")
    if not lake.holds_something(out):
        raise SpecError(f"{out} holds no committed table; run the synthesis step first")
    statement = lake.read_json(out, "_release.json")
    ledger = Ledger(ledger_url)
    try:
        ledger.commit(entry, manifest["spec_sha256"], out, measurements, None, statement)
    finally:
        ledger.close()
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        entry = register(args.ledger, args.measurements, args.out)
        print(f"committed ledger entry {entry}", file=sys.stderr)
    except Exception as err:
        return fail(err, "jobs.register_main", args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
