"""Engine throughput: bound users to k = 10 rows and count all 1-way and 2-way marginals of 10 attributes (55 cubes).

For each engine (local, Beam on FnApiRunner, Spark local[2]) and table size, one fresh process runs the trusted
pass (exact cubes only; the same work every engine does before noise) and reports rows/s, its own peak RSS and the
peak summed RSS of its child processes (Spark's JVM and Python workers; Beam's workers with ``beam-mp``, the direct
runner in multi-processing mode; the FnApiRunner runs its workers inside the driver process). PipelineDP
computes the same 55 histograms with the same bounds (at most k contributions per user, public partitions) on its
Beam and Spark backends; it is per-element Python, so it runs at 100k rows.

`python benchmarks/run.py engines --rows 1000000 10000000` (tables are generated under benchmarks/.data/ once).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
K = 10


def table(rows: int) -> Path:
    """The generated event table of ``rows`` rows (made once, then reused); returns its spec path."""
    from benchmarks.events import generate

    out = DATA / f"events-{rows}"
    spec = out.with_suffix(".yaml")
    if not spec.exists():
        generate(out, rows)
    return spec


class ChildMemory:
    """Samples the summed RSS of this process's descendants (Spark's JVM and its Python workers, Beam's worker
    processes) every 0.2 s from /proc, and keeps the peak; RUSAGE_CHILDREN misses children still running."""

    def __init__(self) -> None:
        import threading

        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _descendants(pid: int) -> list[int]:
        out, todo = [], [pid]
        while todo:
            p = todo.pop()
            kids = []
            try:
                threads = os.listdir(f"/proc/{p}/task")  # children are listed per thread that spawned them
            except OSError:
                threads = []
            for t in threads:
                try:
                    with open(f"/proc/{p}/task/{t}/children") as f:
                        kids += [int(x) for x in f.read().split()]
                except OSError:
                    pass
            out += kids
            todo += kids
        return out

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            total = 0
            for p in self._descendants(os.getpid()):
                try:
                    with open(f"/proc/{p}/statm") as f:
                        total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                except OSError:
                    pass
            self.peak_mb = max(self.peak_mb, total / 2**20)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mb


def _peak_mb(children: ChildMemory) -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return own, children.stop()


def _options(engine: str) -> dict:
    if engine == "beam":
        return {"runner": "FnApiRunner"}
    if engine == "beam-mp":  # Beam's direct runner with two worker processes: the driver only plans and merges
        return {"runner": "DirectRunner", "direct_num_workers": 2, "direct_running_mode": "multi_processing"}
    if engine == "spark":
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ["PYSPARK_PYTHON"] = sys.executable
        from pyspark.sql import SparkSession

        spark = (
            SparkSession.builder.master("local[2]").appName("dpbeam-bench")
            .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", "8")
            .config("spark.driver.memory", "2g").getOrCreate()
        )
        return {"spark": spark}
    return {}


def worker(engine: str, spec_path: str) -> dict:
    """One measurement, in this process: the exact 55 cubes over the bounded table."""
    from dpbeam.aggregate import MarginalCounts
    from dpbeam.bounding import BoundingKey
    from dpbeam.job import engine_module, plan_job
    from dpbeam.marginals import all_cliques
    from dpbeam.spec import load_spec

    children = ChildMemory()
    module = engine.split("-")[0]
    plan = plan_job(load_spec(spec_path), check_outputs=False, engine=module)
    rows = plan.source.num_rows_upper_bound()
    cliques = all_cliques(plan.domain.names, 1) + all_cliques(plan.domain.names, 2)
    options = _options(engine)
    t0 = time.perf_counter()
    cubes = engine_module(module).run_aggregation(
        plan.source, MarginalCounts(plan.domain, cliques), plan.unit_column, K, BoundingKey.fresh(), **options
    )
    wall = time.perf_counter() - t0
    kept = int(cubes[cliques[0]].sum())
    own, child = _peak_mb(children)
    return {"engine": engine, "rows": rows, "kept_rows": kept, "cubes": len(cubes), "wall_s": wall,
            "rows_per_s": rows / wall, "peak_rss_mb": own, "peak_child_rss_mb": child}


def pipelinedp_worker(backend: str, spec_path: str, rows: int) -> dict:
    """PipelineDP computing the same 55 count histograms (k contributions per user, public partitions)."""
    import itertools

    import pipeline_dp
    import pyarrow.parquet as pq

    from dpbeam.job import plan_job
    from dpbeam.spec import load_spec

    children = ChildMemory()
    plan = plan_job(load_spec(spec_path), check_outputs=False)
    names = plan.domain.names
    table = pq.read_table(plan.source.files[0], columns=["user_id"] + names).slice(0, rows)
    from dpbeam.encode import encode_batch

    codes = encode_batch(table, plan.domain)
    data = [(int(u),) + tuple(int(x) for x in r) for u, r in zip(table.column("user_id").to_numpy(), codes)]
    cliques = list(itertools.combinations(range(len(names)), 1)) + list(itertools.combinations(range(len(names)), 2))
    sizes = plan.domain.sizes
    budget = pipeline_dp.NaiveBudgetAccountant(total_epsilon=1.0, total_delta=1e-9)
    params = pipeline_dp.AggregateParams(metrics=[pipeline_dp.Metrics.COUNT], max_contributions=K,
                                         noise_kind=pipeline_dp.NoiseKind.GAUSSIAN)

    def extractors(clique):
        return pipeline_dp.DataExtractors(
            privacy_id_extractor=lambda r: r[0],
            partition_extractor=lambda r, c=clique: tuple(r[1 + j] for j in c),
            value_extractor=lambda r: 1,
        )

    def partitions(clique):
        return list(itertools.product(*[range(sizes[j]) for j in clique]))

    t0 = time.perf_counter()
    if backend == "beam":
        import apache_beam as beam
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        import pipeline_dp.private_beam  # noqa: F401

        engine = pipeline_dp.DPEngine(budget, pipeline_dp.BeamBackend())
        with beam.Pipeline(runner=FnApiRunner()) as p:
            col = p | beam.Create(data)
            outs = [engine.aggregate(col, params, extractors(c), public_partitions=partitions(c)) for c in cliques]
            budget.compute_budgets()
            for i, o in enumerate(outs):
                o | f"count{i}" >> beam.combiners.Count.Globally()
    else:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ["PYSPARK_PYTHON"] = sys.executable
        from pyspark.sql import SparkSession

        spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
                 .config("spark.ui.showConsoleProgress", "false")
                 .config("spark.driver.memory", "2g").getOrCreate())
        rdd = spark.sparkContext.parallelize(data, 4)
        engine = pipeline_dp.DPEngine(budget, pipeline_dp.SparkRDDBackend(spark.sparkContext))
        outs = [engine.aggregate(rdd, params, extractors(c), public_partitions=partitions(c)) for c in cliques]
        budget.compute_budgets()
        for o in outs:
            o.count()
    wall = time.perf_counter() - t0
    own, child = _peak_mb(children)
    return {"engine": f"pipelinedp-{backend}", "rows": rows, "kept_rows": None, "cubes": len(cliques), "wall_s": wall,
            "rows_per_s": rows / wall, "peak_rss_mb": own, "peak_child_rss_mb": child}


def _in_subprocess(args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.engines", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"engine": args[1], "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(rows=(1_000_000, 10_000_000), engines=("local", "beam", "spark"), pipelinedp_rows: int = 100_000,
        reps: int = 1) -> list[dict]:
    results = []
    for n in rows:
        spec = table(n)
        for engine in engines:
            r = _in_subprocess(["worker", engine, str(spec)])
            print(f"  {n:,} rows, {engine}: {r}", flush=True)
            results.append(r)
    if pipelinedp_rows:
        spec = table(min(rows))
        for backend in ("beam", "spark"):
            r = _in_subprocess(["pipelinedp", backend, str(spec), str(pipelinedp_rows)])
            print(f"  PipelineDP {backend} at {pipelinedp_rows:,} rows: {r}", flush=True)
            results.append(r)
    return results


COLUMNS = [("engine", "engine"), ("rows", "rows"), ("rows_per_s", "rows/s"), ("wall_s", "wall s"),
           ("peak_rss_mb", "peak RSS MB (driver process)"), ("peak_child_rss_mb", "peak RSS MB (child processes)")]


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "worker":
        out = worker(rest[0], rest[1])
    else:
        out = pipelinedp_worker(rest[0], rest[1], int(rest[2]))
    print(json.dumps(out))
