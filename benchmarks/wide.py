"""Wide warehouse tables (50-200 columns): each stage's time, peak memory and 2-way TVD, default synthesizer vs MST.

The table: columns come in groups of 5-10; each group has a latent factor (4-8 levels) that depends on an earlier
group's factor (a random tree of groups), every column depends on its group's factor and a fifth of them also on a
second group's, so dependence runs within groups and, more weakly, across them. Column kinds: about 70% categorical
(strings, 2-50 values, skewed), 15% integer (bounds [0, c - 1], one bin per value) and 15% float (a normal around a
factor-dependent mean, bounds [0, 100], 8-20 bins). Deterministic for a seed; written in files of 200,000 rows.

Each job runs in a fresh process (`python benchmarks/wide.py job SPEC METHOD OUT.json`), so peak RSS is the job's;
stage times come from the job's own progress events (counting, MST, refinement fit/select/measure, final fit, rows).
TVD: mean over all 2-way marginals of the encoded columns, synthetic vs real.

`python benchmarks/run.py wide --cols 50 100 200 --rows 200000 1000000 1000000` (one --rows value: every width).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

ROWS_PER_FILE = 200_000
CHUNK = 50_000
DEFAULT_SHAPES = ((50, 200_000), (100, 1_000_000), (200, 1_000_000))


def _structure(cols: int, rng: np.random.Generator) -> dict[str, Any]:
    """Groups, latent factors and every column's conditional distribution, from the seed."""
    groups, g = [], 0
    while sum(len(x) for x in groups) < cols:
        n = int(min(rng.integers(5, 11), cols - sum(len(x) for x in groups)))
        groups.append(list(range(g, g + n)))
        g += n
    levels = [int(rng.integers(4, 9)) for _ in groups]
    parents = [-1] + [int(rng.integers(0, i)) for i in range(1, len(groups))]
    # transition matrices: a latent mostly follows its parent's level (mapped), sometimes not
    trans = []
    for i, p in enumerate(parents):
        if p < 0:
            trans.append(rng.dirichlet(np.ones(levels[i])))
            continue
        t = rng.dirichlet(np.full(levels[i], 0.3), size=levels[p])
        t[np.arange(levels[p]), np.arange(levels[p]) % levels[i]] += 1.5
        trans.append(t / t.sum(1, keepdims=True))
    columns = []
    for gi, members in enumerate(groups):
        for j in members:
            second = int(rng.integers(0, len(groups))) if rng.random() < 0.2 else gi
            u = rng.random()
            kind = "categorical" if u < 0.7 else ("integer" if u < 0.85 else "float")
            card = int(np.exp(rng.uniform(np.log(2), np.log(50.99))))
            z_levels = levels[gi] * levels[second]
            if kind == "float":
                mu = rng.uniform(10, 90, size=z_levels)
                columns.append({"name": f"f{j:03d}", "kind": kind, "group": gi, "second": second, "mu": mu,
                                "sd": float(rng.uniform(4, 15)), "bins": int(rng.integers(8, 21))})
                continue
            base = 1.0 / np.arange(1, card + 1) ** 1.1
            base /= base.sum()
            cond = 0.4 * base + 0.6 * rng.dirichlet(np.full(card, 0.4), size=z_levels)
            prefix = "c" if kind == "categorical" else "i"
            columns.append({"name": f"{prefix}{j:03d}", "kind": kind, "group": gi, "second": second,
                            "card": card, "cum": np.cumsum(cond, axis=1)})
    return {"groups": groups, "levels": levels, "parents": parents, "trans": trans, "columns": columns}


def _latents(s: dict, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    z: list[np.ndarray] = []
    for i, p in enumerate(s["parents"]):
        if p < 0:
            z.append(rng.choice(s["levels"][i], n, p=s["trans"][i]))
            continue
        cum = np.cumsum(s["trans"][i], axis=1)[z[p]]
        z.append(np.minimum((cum < rng.random(n)[:, None]).sum(1), s["levels"][i] - 1))
    return z


def _chunk(s: dict, n: int, rng: np.random.Generator) -> pa.Table:
    z = _latents(s, n, rng)
    arrays, fields = [], []
    for c in s["columns"]:
        zz = z[c["group"]] * s["levels"][c["second"]] + z[c["second"]]
        if c["kind"] == "float":
            x = np.clip(rng.normal(c["mu"][zz], c["sd"]), 0.0, 100.0)
            arrays.append(pa.array(np.round(x, 3)))
            fields.append(pa.field(c["name"], pa.float64(), nullable=False))
            continue
        code = np.minimum((c["cum"][zz] < rng.random(n)[:, None]).sum(1), c["card"] - 1)
        if c["kind"] == "integer":
            arrays.append(pa.array(code.astype(np.int64)))
            fields.append(pa.field(c["name"], pa.int64(), nullable=False))
        else:
            labels = pa.array([f"v{i:02d}" for i in range(c["card"])])
            arrays.append(pa.DictionaryArray.from_arrays(pa.array(code.astype(np.int32)), labels))
            fields.append(pa.field(c["name"], pa.dictionary(pa.int32(), pa.string()), nullable=False))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def generate(out_dir: str | Path, cols: int, rows: int, seed: int = 0) -> Path:
    """Write the table under ``out_dir`` (parquet files) and its spec next to it; return the spec path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    s = _structure(cols, rng)
    writer, part, in_part = None, 0, 0
    for start in range(0, rows, CHUNK):
        t = _chunk(s, min(CHUNK, rows - start), rng)
        if writer is None:
            writer = pq.ParquetWriter(out_dir / f"part-{part:05d}.parquet", t.schema)
        writer.write_table(t)
        in_part += t.num_rows
        if in_part >= ROWS_PER_FILE:
            writer.close()
            writer, part, in_part = None, part + 1, 0
    if writer is not None:
        writer.close()
    columns: dict[str, Any] = {}
    for c in s["columns"]:
        if c["kind"] == "categorical":
            columns[c["name"]] = {"kind": "categorical", "values": [f"v{i:02d}" for i in range(c["card"])]}
        elif c["kind"] == "integer":
            columns[c["name"]] = {"kind": "integer", "bounds": [0, c["card"] - 1]}
        else:
            columns[c["name"]] = {"kind": "float", "bounds": [0.0, 100.0], "bins": c["bins"]}
    spec = {
        "name": f"wide-{cols}",
        "source": {"uri": str(out_dir)},
        "privacy": {"unit": "row", "epsilon": 1.0, "delta": 1e-9},
        "columns": columns,
        "output": {"uri": str(out_dir) + "-synthetic"},
    }
    spec_path = out_dir.with_suffix(".yaml")
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec_path


# ----------------------------------------------------------------------------------------------------------------------
# One job, in its own process


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    """CPU seconds of this process, every thread: on a shared machine, closer to an unloaded wall time than wall."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


STAGE_OF = (  # progress message prefix -> the stage that starts there
    ("reading, bounding and counting", "count"),
    ("measuring ", "mst"),
    ("refinement round", "refine"),
    ("fitting ", "fit"),
    ("generating rows", "generate"),
)


def job(spec_path: str, method: str, out_json: str, synth_dir: str, seed: int = 0) -> None:
    """Run the whole job (local engine) and write {stage: seconds}, peak RSS and the statement's synthesizer info."""
    from dpbeam.job import run_job
    from dpbeam.progress import Reporter
    from dpbeam.spec import load_spec

    marks: list[tuple[str, float, float, float]] = []

    class Timing(Reporter):
        def _mark(self, msg: str) -> None:
            for prefix, stage in STAGE_OF:
                if msg.startswith(prefix) and (not marks or marks[-1][0] != stage):
                    marks.append((stage, time.perf_counter(), _peak_mb(), _cpu_s()))

        def stage(self, description, total=None):
            self._mark(description)
            return super().stage(description, total)

        def say(self, message):
            self._mark(message)

    spec = load_spec(spec_path, {"synthesizer.method": method, "output.uri": synth_dir,
                                 "output.measurements_uri": synth_dir + "-measurements", "seed": seed})
    t0, c0 = time.perf_counter(), _cpu_s()
    statement = run_job(spec, reporter=Timing())
    end = time.perf_counter()
    stages: dict[str, float] = {}
    cpu: dict[str, float] = {}
    peaks: dict[str, float] = {}
    bounds = [("plan", t0, 0.0, c0)] + marks + [("end", end, _peak_mb(), _cpu_s())]
    for (name, start, _, c_start), (_, stop, peak, c_stop) in zip(bounds, bounds[1:]):
        stages[name] = stages.get(name, 0.0) + stop - start
        cpu[name] = cpu.get(name, 0.0) + c_stop - c_start
        peaks[name] = peak
    Path(out_json).write_text(json.dumps({
        "wall_s": end - t0, "cpu_s": _cpu_s() - c0, "stages_s": stages, "stages_cpu_s": cpu,
        "peak_rss_mb": _peak_mb(), "peak_rss_mb_by_end_of": peaks,
        "synthesizer": statement["synthesizer"], "refined": len(statement["measurements"]["cliques"]),
    }))


# ----------------------------------------------------------------------------------------------------------------------
# The suite


def _tvd2(real_dir: Path, synth_dir: Path, spec_path: Path) -> float:
    from dpbeam.job import plan_job
    from dpbeam.spec import load_spec
    from dpbeam.evaluate.metrics import _codes
    from dpbeam.marginals import count_cliques

    domain = plan_job(load_spec(str(spec_path)), check_outputs=False).domain
    pairs = list(combinations(domain.names, 2))

    def cubes(path: Path) -> dict:
        out: dict = {}
        for f in sorted(path.glob("*.parquet")):
            c = count_cliques(_codes(pq.read_table(f), domain), domain, pairs)
            out = c if not out else {k: out[k] + c[k] for k in out}
        return out

    a, b = cubes(real_dir), cubes(synth_dir)
    return float(np.mean([0.5 * np.abs(a[p] / a[p].sum() - b[p] / b[p].sum()).sum() for p in pairs]))


def run(cols=None, rows=None, methods=("mst-refined", "mst"), reps: int = 1) -> list[dict[str, Any]]:
    cols = list(cols) if cols else [c for c, _ in DEFAULT_SHAPES]
    default_rows = dict(DEFAULT_SHAPES)
    if rows and len(rows) == len(cols):
        shapes = list(zip(cols, rows))
    elif rows:
        shapes = [(c, rows[0]) for c in cols]
    else:
        shapes = [(c, default_rows.get(c, 1_000_000)) for c in cols]
    out = []
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    for d, n in shapes:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            spec = generate(Path(tmp) / "table", d, n)
            print(f"  wide {d} x {n:,}: generated in {time.perf_counter() - t0:.1f}s", flush=True)
            for method in methods:
                for rep in range(reps):
                    res, synth = Path(tmp) / f"{method}-{rep}.json", Path(tmp) / f"synth-{method}-{rep}"
                    subprocess.run([sys.executable, __file__, "job", str(spec), method, str(res), str(synth),
                                    str(rep)], check=True, env=env)
                    r = json.loads(res.read_text())
                    tvd = _tvd2(Path(tmp) / "table", synth, spec)
                    st = r["stages_s"]
                    print(f"  wide {d} x {n:,} {method} rep={rep}: wall {r['wall_s']:.1f}s "
                          f"cpu {r.get('cpu_s', float('nan')):.1f}s peak "
                          f"{r['peak_rss_mb']:,.0f} MB 2-way TVD {tvd:.4f} stages "
                          + " ".join(f"{k}={v:.1f}" for k, v in st.items()), flush=True)
                    out.append({"benchmark": "wide", "columns": d, "rows": n, "method": method, "rep": rep,
                                "wall_s": r["wall_s"], "cpu_s": r.get("cpu_s"), "stages_cpu_s": r.get("stages_cpu_s"),
                                "peak_rss_mb": r["peak_rss_mb"], "tvd_2way": tvd,
                                **{f"{k}_s": st.get(k, 0.0) for k in ("plan", "count", "mst", "refine", "fit",
                                                                      "generate")},
                                "engine": r["synthesizer"].get("engine"),
                                "fit_iters_run": r["synthesizer"].get("iters_run"),
                                "engine_reason": r["synthesizer"].get("engine_reason", ""),
                                "measured_cliques": r["refined"], "peak_rss_mb_by_end_of": r["peak_rss_mb_by_end_of"]})
    return out


COLUMNS = [("columns", "columns"), ("rows", "rows"), ("method", "method"), ("wall_s", "wall s"), ("cpu_s", "CPU s"),
           ("count_s", "count s"), ("mst_s", "MST s"), ("refine_s", "refine s"), ("fit_s", "fit s"),
           ("generate_s", "generate s"), ("peak_rss_mb", "peak RSS MB"), ("tvd_2way", "2-way TVD"),
           ("engine", "engine")]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "job":
        job(*sys.argv[2:6], seed=int(sys.argv[6]) if len(sys.argv) > 6 else 0)
    elif len(sys.argv) > 1 and sys.argv[1] == "generate":
        print(generate(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    else:
        print(__doc__)
