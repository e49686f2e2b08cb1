"""Generation speed of the PGM engine: rows/s of the sampler alone and of the whole write path, on two models.

Models: Adult (14 columns; the embedded spec at eps = 1, seed 0) and the 10-column user-event table of the engine
benchmark (1M rows, k = 10, eps = 1). Each is measured once and fitted once (the fit is not timed here); then:

- ``numpy forward, N threads``: :meth:`dpbeam.synth.pgm.PGMModel.sample` drawing 1M rows (stratified rounding) in
  seeded blocks on 1 and on 2 threads (the rows are the same), codes only;
- ``write``: :func:`dpbeam.synth.generate.write_synthetic_table` writing 1M rows (sample, expand compressed codes,
  decode to values, Parquet, commit) in the default chunks;
- ``mbi synthetic_data``: the sampler it replaces, on 48,842 rows, timed on a second call (its first call compiles).

Wall and process CPU seconds are both reported: the machine may be shared, and CPU time is the steadier figure.
`python benchmarks/run.py generation`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dpbeam.datasets import adult_dir
from dpbeam.job import measure, plan_job
from dpbeam.spec import load_spec

ROWS = 1_000_000
MBI_ROWS = 48_842


def _artifact(spec_path: Path, overrides: dict[str, Any]):
    spec = load_spec(spec_path, overrides)
    return measure(plan_job(spec, check_outputs=False))


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _mbi_sample(model, rows: int, seed: int) -> None:
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        model.model.synthetic_data(rows)
    finally:
        np.random.set_state(state)


def _models(tmp: str) -> list[tuple[str, Any]]:
    from benchmarks.engines import table

    out = [("adult (14 columns)", _artifact(adult_dir() / "adult.yaml",
                                            {"output.uri": f"{tmp}/adult", "privacy.epsilon": 1.0, "seed": 0}))]
    events = table(1_000_000)
    out.append(("user events (10 columns)", _artifact(events, {"output.uri": f"{tmp}/events", "seed": 0})))
    return out


def run(reps: int = 1, rows: int = ROWS, mbi: bool = True) -> list[dict[str, Any]]:
    from dpbeam.synth import pgm
    from dpbeam.synth.generate import write_synthetic_table

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, artifact in _models(tmp):
            model = pgm.fit(artifact)
            model.sampler  # calibrate and build the tables once, outside the timings
            timings = {"numpy forward, 1 thread": lambda: model.sample(rows, seed=1, threads=1),
                       "numpy forward, 2 threads": lambda: model.sample(rows, seed=1, threads=2),
                       "write": lambda: write_synthetic_table(model, artifact, f"{tmp}/out", rows, 1,
                                                              {"engine": "pgm"}, overwrite=True)}
            for what, fn in timings.items():
                for rep in range(reps):
                    wall, cpu = _timed(fn)
                    results.append(_row(name, what, rows, wall, cpu, artifact))
                    print(f"  {name} {what}: {rows / wall:,.0f} rows/s wall, {rows / cpu:,.0f} rows/s CPU", flush=True)
            if mbi:
                _mbi_sample(model, MBI_ROWS, 0)  # compiles
                wall, cpu = _timed(lambda: _mbi_sample(model, MBI_ROWS, 1))
                results.append(_row(name, "mbi synthetic_data (before)", MBI_ROWS, wall, cpu, artifact))
                print(f"  {name} mbi: {MBI_ROWS / wall:,.0f} rows/s wall", flush=True)
    return results


def _row(name: str, what: str, rows: int, wall: float, cpu: float, artifact) -> dict[str, Any]:
    return {"benchmark": "generation", "model": name, "columns": len(artifact.domain.names), "what": what,
            "rows": rows, "wall_s": wall, "cpu_s": cpu, "rows_per_s": rows / wall, "rows_per_cpu_s": rows / cpu}


COLUMNS = [("model", "model"), ("what", "what"), ("rows", "rows"), ("rows_per_s", "rows/s (wall)"),
           ("rows_per_cpu_s", "rows/s (CPU)"), ("wall_s", "wall s")]
