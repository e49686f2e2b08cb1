"""End-to-end speed (issue 9): `dpbeam demo`, and the user-level job on the 10-column event table at 1M and 10M rows.

Each run is a fresh Python process (imports included, as a user pays them), running the whole job in-process on the
local engine with a reporter that records every stage's wall and CPU seconds. Reported per run: wall and CPU seconds
of the process from start to exit, the stage breakdown, peak RSS of the process (the driver: the local engine has no
other), and the load average before and after (the machine may be shared: CPU seconds are the steadier figure).

`python benchmarks/run.py speed [--rows 1000000 10000000] [--reps 1]`. The event tables come from
:func:`benchmarks.engines.table` (generated once under benchmarks/.data).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _child(kind: str, arg: str, out: str) -> None:
    """Runs in the child process: the job, timed per stage; prints one JSON line."""
    t0, c0 = time.perf_counter(), time.process_time()
    from dpbeam.job import run_job
    from dpbeam.progress import Reporter
    from dpbeam.spec import load_spec

    class Timed(Reporter):
        def __init__(self) -> None:
            super().__init__()
            self.cpu: dict[str, float] = {}
            self.peak_mb: dict[str, float] = {}  # the process's peak RSS so far, at the end of each stage

        @contextlib.contextmanager
        def timed(self, name: str) -> Iterator[None]:
            c = time.process_time()
            with super().timed(name):
                yield
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c
            self.peak_mb[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    imports = (time.perf_counter() - t0, time.process_time() - c0)
    if kind == "demo":
        from dpbeam.datasets import adult_dir

        spec = load_spec(adult_dir() / "adult.yaml", {"output.uri": f"{out}/adult-synthetic", "privacy.epsilon": 1.0})
    else:
        spec = load_spec(Path(arg), {"output.uri": f"{out}/events-synthetic"})
    reporter = Timed()
    statement = run_job(spec, "local", reporter=reporter)
    print(json.dumps({
        "imports": imports, "stages": {k: (reporter.timings[k], reporter.cpu[k]) for k in reporter.timings},
        "iters_run": statement["synthesizer"].get("iters_run"), "stage_peak_rss_mb": reporter.peak_mb,
        "wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def _run(kind: str, arg: str = "") -> dict[str, Any]:
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run([sys.executable, __file__, "--child", kind, arg, tmp], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"the {kind} run failed:\n{proc.stderr[-3000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**child, "process_wall": wall, "process_cpu": cpu, "load_before": load0, "load_after": os.getloadavg()[0]}


def _row(item: str, rows: int | None, r: dict[str, Any]) -> dict[str, Any]:
    stages = ", ".join(f"{k} {w:.1f}/{c:.1f}" for k, (w, c) in r["stages"].items())
    return {"benchmark": "speed", "item": item, "rows": rows if rows is not None else "-",
            "wall_s": r["process_wall"], "cpu_s": r["process_cpu"],
            "imports": f"{r['imports'][0]:.1f}/{r['imports'][1]:.1f}", "stages": stages,
            "iters_run": r["iters_run"], "peak_rss_mb": r["peak_rss_mb"],
            "peak_rss_after_stage_mb": ", ".join(f"{k} {v:.0f}" for k, v in r.get("stage_peak_rss_mb", {}).items()),
            "load": f"{r['load_before']:.1f}-{r['load_after']:.1f}", "raw": r}


def run(reps: int = 1, rows: tuple[int, ...] = (1_000_000, 10_000_000)) -> list[dict[str, Any]]:
    from benchmarks.engines import table

    results = []
    for _ in range(reps):
        r = _run("demo")
        results.append(_row("dpbeam demo (Adult, eps 1)", None, r))
        print(f"  demo: {r['process_wall']:.1f} s wall, {r['process_cpu']:.1f} s CPU, load {r['load_before']:.1f}",
              flush=True)
    for n in rows:
        spec = table(n)
        for _ in range(reps):
            r = _run("job", str(spec))
            results.append(_row("user-level job, 10 columns, k = 10", n, r))
            print(f"  job {n:,}: {r['process_wall']:.1f} s wall, {r['process_cpu']:.1f} s CPU, "
                  f"peak {r['peak_rss_mb']:.0f} MB, load {r['load_before']:.1f}", flush=True)
    return results


COLUMNS = [("item", "item"), ("rows", "input rows"), ("wall_s", "wall s"), ("cpu_s", "CPU s"),
           ("imports", "imports wall/CPU s"), ("stages", "stages wall/CPU s"), ("iters_run", "fit iterations"),
           ("peak_rss_mb", "peak RSS MB"), ("peak_rss_after_stage_mb", "peak RSS MB after each stage"),
           ("load", "load avg")]

if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--child":
    _child(sys.argv[2], sys.argv[3], sys.argv[4])
