"""Synthesis main (post-processing only): a measurements artifact in, a synthetic Parquet table and its release
statement out. It never sees raw data, so it may run in another project or on a GPU pool.

    python -m jobs.synthesize_main --measurements gs://artifacts/events/measurements --out gs://synthetic/events

``--engine auto`` (the default) picks Private-PGM while its junction tree is small and the torch engine otherwise;
the torch engine runs on the GPU when one is visible (CUDA), else on the CPU. ``--engine torch`` forces it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from jobs.common import fail


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobs.synthesize_main", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--measurements", required=True, help="The measurements artifact's URI.")
    p.add_argument("--out", required=True, help="Where to write the synthetic table (committed atomically).")
    p.add_argument("--rows", type=int, default=None, help="Rows to generate (default: the artifact's DP estimate).")
    p.add_argument("--engine", default="auto", choices=("auto", "pgm", "torch"), help="Synthesis engine.")
    p.add_argument("--iters", type=int, default=1000, help="Optimization iterations.")
    p.add_argument("--seed", type=int, default=0, help="Seed for sampling (not for privacy noise).")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing table.")
    p.add_argument("--statement-out", default=None,
                   help="Also write the release statement (JSON) to this local path, for a scheduler's XCom.")
    p.add_argument("--debug", action="store_true", help="Raise with the full traceback.")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        from dpbeam.synth.synthesize import synthesize

        statement = synthesize(args.measurements, args.out, rows=args.rows, seed=args.seed, engine=args.engine,
                               iters=args.iters, overwrite=args.overwrite)
        if args.statement_out:
            with open(args.statement_out, "w") as f:
                json.dump(statement, f, indent=2, default=str)
        print(f"wrote the synthetic table to {args.out}", file=sys.stderr)
        print(statement["statement"])
    except Exception as err:
        return fail(err, "jobs.synthesize_main", args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
