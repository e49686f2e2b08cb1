"""Run the benchmark suite: `python benchmarks/run.py [NAME ...] [--reps N]`.

Writes benchmarks/results/NAME-YYYYmmdd-HHMMSS.json (with the machine's description) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import adult, engines, evaluate, generation, real_tables  # noqa: E402
from benchmarks import speed, task, torch_engine, wide  # noqa: E402
from dpbeam.versions import library_versions  # noqa: E402

SUITE = {"adult": adult, "engines": engines, "torch_engine": torch_engine, "wide": wide, "generation": generation,
         "evaluate": evaluate, "real_tables": real_tables, "speed": speed, "task": task}


def machine() -> dict:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.processor(), "libraries": library_versions()}


def markdown(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1 else f"{v:,.1f}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    head = "| " + " | ".join(t for _, t in columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "\n".join("| " + " | ".join(fmt(r[k]) for k, _ in columns) + " |" for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*", default=list(SUITE))
    ap.add_argument("--reps", type=int, default=None,
                    help="runs per configuration (default 3; real_tables: 1; task: 5)")
    ap.add_argument("--eps", type=float, nargs="*", default=None, help="adult: epsilons")
    ap.add_argument("--methods", nargs="*", default=None, help="adult, real_tables: methods (mst mst-refined aim)")
    ap.add_argument("--rows", type=int, nargs="*", default=None, help="engines, wide: table sizes")
    ap.add_argument("--cols", type=int, nargs="*", default=None, help="wide: numbers of columns")
    ap.add_argument("--engines", nargs="*", default=None, help="engines: which (local beam spark)")
    ap.add_argument("--tables", nargs="*", default=None, help="real_tables: which (default all)")
    ap.add_argument("--pipelinedp-rows", type=int, default=None, help="engines: PipelineDP table size (0: skip)")
    ap.add_argument("--shares", type=float, nargs="*", default=None, help="task: task budget shares")
    ap.add_argument("--pairs", type=float, nargs="*", default=None,
                    help="task: pairs_share values (each share runs with each; default: the spec's)")
    ap.add_argument("--audit-runs", type=int, default=None, help="evaluate: noisy releases per table in the audit")
    args = ap.parse_args()
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    for name in args.names:
        mod = SUITE[name]
        reps = args.reps if args.reps is not None else (1 if name == "real_tables" else 5 if name == "task" else 3)
        kwargs = {"reps": reps}
        if name == "evaluate" and args.audit_runs:
            kwargs["audit_runs"] = args.audit_runs
        if args.eps and name in ("adult", "evaluate", "task"):
            kwargs["epsilons"] = tuple(args.eps)
        if args.methods and name == "adult":
            kwargs["methods"] = tuple(args.methods)
        if name == "generation":
            kwargs["reps"] = min(reps, 2)
            if args.rows:
                kwargs["rows"] = args.rows[0]
        if name == "engines":
            kwargs.update({k: v for k, v in (("rows", args.rows), ("engines", args.engines),
                                             ("pipelinedp_rows", args.pipelinedp_rows)) if v is not None})
        if name == "speed":
            kwargs["reps"] = reps if args.reps is not None else 1
            if args.rows:
                kwargs["rows"] = tuple(args.rows)
        if name == "wide":
            kwargs.update({k: v for k, v in (("cols", args.cols), ("rows", args.rows)) if v is not None})
        if args.tables and name in ("real_tables", "task"):
            kwargs["tables"] = tuple(args.tables)
        if args.shares and name == "task":
            kwargs["shares"] = tuple(args.shares)
        if args.pairs is not None and name == "task":
            kwargs["pairs"] = tuple(args.pairs)
        if args.methods and name == "real_tables":
            kwargs["methods"] = tuple(args.methods)
        rows = mod.run(**kwargs)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = out_dir / f"{name}-{stamp}.json"
        path.write_text(json.dumps({"benchmark": name, "machine": machine(), "rows": rows}, indent=2))
        print(f"\n## {name}  ({path.relative_to(out_dir.parent.parent)})\n")
        print(markdown(rows, mod.COLUMNS))


if __name__ == "__main__":
    main()
