"""Adult quality and time: the whole job (local engine) at several epsilons, mean 2-way and 3-way TVD.

Each run is `run_job` on the embedded Adult spec with delta = 1e-9, row-level privacy, timed end to end (read, count,
measure, fit, generate, write; wall and CPU seconds of the process, and the 1-minute load average at the end); TVD compares the synthetic table with the real one over all 91 two-way and all 364
three-way marginals.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dpbeam.datasets import adult_dir
from dpbeam.evaluate.metrics import mean_tvd
from dpbeam.job import plan_job, run_job
from dpbeam.spec import load_spec


def run(epsilons=(0.1, 1.0, 10.0), methods=("mst", "mst-refined", "aim"), reps: int = 3) -> list[dict[str, Any]]:
    real = pacsv.read_csv(str(adult_dir() / "adult.csv"))
    rows = []
    for method in methods:
        for eps in epsilons:
            tv2, tv3, walls, cpus, loads = [], [], [], [], []
            for rep in range(reps):
                with tempfile.TemporaryDirectory() as tmp:
                    spec = load_spec(
                        adult_dir() / "adult.yaml",
                        {"output.uri": f"{tmp}/synth", "privacy.epsilon": eps, "synthesizer.method": method,
                         "seed": rep},
                    )
                    t0, c0 = time.perf_counter(), time.process_time()
                    run_job(spec)
                    walls.append(time.perf_counter() - t0)
                    cpus.append(time.process_time() - c0)  # CPU seconds of this process, all threads
                    loads.append(os.getloadavg()[0])
                    synth = pq.read_table(f"{tmp}/synth")
                    tvd = mean_tvd(real, synth, plan_job(spec, check_outputs=False).domain)
                tv2.append(tvd[2])
                tv3.append(tvd[3])
                print(f"  adult {method} eps={eps} rep={rep}: 2-way {tvd[2]:.4f} 3-way {tvd[3]:.4f} "
                      f"wall {walls[-1]:.1f}s cpu {cpus[-1]:.1f}s load {loads[-1]:.1f}", flush=True)
            rows.append({
                "benchmark": "adult", "method": method, "epsilon": eps, "delta": 1e-9, "reps": reps,
                "tvd_2way_mean": float(np.mean(tv2)), "tvd_2way_std": float(np.std(tv2)),
                "tvd_3way_mean": float(np.mean(tv3)), "tvd_3way_std": float(np.std(tv3)),
                "wall_s_mean": float(np.mean(walls)), "cpu_s_mean": float(np.mean(cpus)),
                "load_1min_mean": float(np.mean(loads)),
            })
    return rows


COLUMNS = [("method", "method"), ("epsilon", "ε"), ("tvd_2way_mean", "2-way TVD"), ("tvd_3way_mean", "3-way TVD"),
           ("wall_s_mean", "wall s"), ("cpu_s_mean", "CPU s"), ("load_1min_mean", "load"), ("reps", "runs")]
