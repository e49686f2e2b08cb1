"""Register a release in the ledger: the last step of a scheduled run whose halves ran apart (measure on Dataflow or
Spark, synthesize on a GPU job). The measurements step reserved the run's budget before reading a row and marked it
spent once the measurements existed; this step commits the entry with the synthetic table's release statement.

    python -m jobs.register_main --ledger postgresql+psycopg://... --measurements gs://.../measurements \\
        --out gs://synthetic/events

The ledger entry is the one the artifact's manifest names (``lineage.ledger_entry``); the ledger refuses the commit
if the artifact came from another spec than the one reserved for. The statement is read from the table's
``_release.json``. Nothing here touches raw data. A scheduler that holds the entry id calls
``dpbeam ledger commit ENTRY --measurements URI --out URI`` instead (it also checks the id).
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
    """Commit the ledger entry of ``measurements`` with the statement of the table at ``out``; return its id (the
    same as ``dpbeam ledger commit``: :func:`dpbeam.scheduled.commit`)."""
    from dpbeam.scheduled import commit

    return commit(ledger_url, measurements, out)


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
