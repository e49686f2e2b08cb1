"""The torch synthesis engine: Adult all-pairs fit, a wide synthetic table, and 10M rows generated and written.

Items (each one row of the table; the device is cuda when available, else cpu):

* ``adult``: the embedded Adult table, eps = 1, delta = 1e-9, row-level. Every 1-way and all 91 2-way marginals are
  counted exactly (dpbeam.marginals) and measured with the discrete Gaussian, each of sensitivity 1, the budget split
  evenly over the 105 measurements (no compression). Private-PGM cannot fit this: its junction tree is one clique
  of all 14 columns. The engine's default fit (K = ``adult_rows``, at most ``steps`` steps, stopping at the noise
  level): fit time, steps taken, ms per step, and the mean 2-way and 3-way TVD between the real table and as many
  rows sampled from the fit.
* ``adult-fixed``: the same artifact, all ``steps`` steps without the stopping rule, K = ``fixed_rows``: the time
  of a fixed-length fit, and what running past the noise level costs in TVD.
* ``wide``: 100 columns x 32 bins, every 1-way and all 4,950 2-way marginals of a random table (Gaussian noise from
  numpy: this item times the engine and releases nothing), K = ``wide_rows``. Reported: ms per step over
  ``wide_steps`` steps after one warm-up step, and peak memory.
* ``generate``: ``generate_rows`` rows from the Adult fit, through the production path (write_synthetic_table:
  sample, expand, decode, Parquet parts in 1M-row chunks, atomic commit). Reported: time and peak host RSS.

Peak memory: on cuda ``torch.cuda.max_memory_allocated`` (reset per item); on cpu the process's peak RSS (VmHWM,
reset per item through /proc/self/clear_refs where Linux allows it), which counts torch's allocations. Each row also
gives the peak less the level at the item's start (what the item itself added).
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from itertools import combinations
from typing import Any

import numpy as np
import pyarrow.csv as pacsv
import torch

from dpbeam.datasets import adult_dir
from dpbeam.domain import BinnedDomain, TableDomain, build_table_domain
from dpbeam.encode import encode_batch
from dpbeam.evaluate.metrics import mean_tvd
from dpbeam.marginals import count_cliques
from dpbeam.measurements import MeasurementsArtifact, NoisyMarginal
from dpbeam.privacy.accountant import ZCDPAccountant
from dpbeam.privacy.noise import add_discrete_gaussian, gaussian_sigma
from dpbeam.spec import load_spec
from dpbeam.synth import relaxed, torch_engine
from dpbeam.synth.generate import write_synthetic_table


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def _peak_host_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # lifetime peak, KiB on Linux


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return _peak_host_mb()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def adult_artifact(epsilon: float = 1.0, delta: float = 1e-9) -> tuple[MeasurementsArtifact, np.ndarray]:
    """Noisy 1-way and 2-way marginals of Adult (all of them), and the real codes (for TVD only)."""
    table = pacsv.read_csv(str(adult_dir() / "adult.csv"))
    spec = load_spec(adult_dir() / "adult.yaml")
    domain = build_table_domain(spec.columns, table.schema)
    codes = encode_batch(table, domain)
    cliques = [(n,) for n in domain.names] + list(combinations(domain.names, 2))
    cubes = count_cliques(codes, domain, cliques)
    acc = ZCDPAccountant(epsilon, delta, {"measure": 1.0})
    sigma = gaussian_sigma(acc.rho / len(cliques), 1.0)
    measurements = []
    for c in cliques:
        noisy, rho = add_discrete_gaussian(cubes[c], sigma, 1.0)
        acc.charge("measure", "discrete Gaussian", rho, clique=list(c), sigma=sigma, sensitivity_l2=1)
        measurements.append(NoisyMarginal(c, noisy.astype(np.float64), sigma, "discrete Gaussian", rho))
    privacy = {"privacy_unit": "row", "adjacency": "add or remove one row", "max_rows_per_unit": 1, **acc.record()}
    manifest = {"method": "all 1-way and 2-way marginals (benchmark)"}
    return MeasurementsArtifact(domain, {}, tuple(measurements), privacy, manifest), codes


def wide_artifact(columns: int = 100, bins: int = 32, n: int = 100_000, sigma: float = 10.0,
                  seed: int = 0) -> MeasurementsArtifact:
    """Every 1-way and 2-way marginal of a random table with a latent class (so pairs are correlated), plus noise."""
    rng = np.random.default_rng(seed)
    domain = TableDomain(tuple(BinnedDomain(f"c{j:03d}", "int64", False, edges=tuple(range(bins + 1)))
                               for j in range(columns)))
    latent = rng.integers(0, 4, n)
    shift = rng.integers(0, bins, (4, columns))
    codes = (shift[latent] + rng.geometric(0.3, (n, columns)) - 1) % bins
    cliques = [(c,) for c in domain.names] + list(combinations(domain.names, 2))
    cubes = count_cliques(codes, domain, cliques)
    measurements = tuple(
        NoisyMarginal(c, cubes[c] + rng.normal(0, sigma, cubes[c].shape), sigma, "Gaussian (benchmark only)", 0.0)
        for c in cliques
    )
    return MeasurementsArtifact(domain, {}, measurements, {})


def _fit_timed(artifact: MeasurementsArtifact, steps: int, rows: int, device: torch.device, seed: int,
               precision: str, stop_at: float | None) -> tuple[torch_engine.TorchModel, float]:
    _sync(device)
    t0 = time.perf_counter()
    model = torch_engine.fit(artifact, steps=steps, rows=rows, seed=seed, device=device, precision=precision,
                             stop_at=stop_at)
    _sync(device)
    return model, time.perf_counter() - t0


def run(
    reps: int = 1,
    items: tuple[str, ...] = ("adult", "adult-fixed", "wide", "generate"),
    device: str | None = None,
    precision: str = "auto",
    steps: int = 2000,
    adult_rows: int = 48_842,
    fixed_rows: int | None = None,
    wide_rows: int = 100_000,
    wide_steps: int | None = None,
    generate_rows: int = 10_000_000,
    epsilons: tuple[float, ...] = (1.0,),
) -> list[dict[str, Any]]:
    """The items above. ``adult`` is the engine's default fit (at most ``steps`` steps, stopping at the noise level);
    ``adult-fixed`` runs all ``steps`` steps at K = ``fixed_rows``. On cpu the defaults shrink what would take hours:
    ``fixed_rows`` 2,048 (else ``adult_rows``) and ``wide_steps`` 2 (else 20); every row states its K and steps."""
    dev = torch_engine.pick_device(device)
    cpu = dev.type == "cpu"
    fixed_rows = fixed_rows or (2048 if cpu else adult_rows)
    wide_steps = wide_steps or (2 if cpu else 20)
    base = {"device": "cpu" if cpu else torch.cuda.get_device_name(dev), "threads": torch.get_num_threads(),
            "precision": precision}
    out: list[dict[str, Any]] = []
    model = artifact = None
    fits = [("adult", adult_rows, torch_engine.STOP_AT)] if {"adult", "generate"} & set(items) else []
    fits += [("adult-fixed", fixed_rows, None)] if "adult-fixed" in items else []
    for eps in epsilons if fits else ():
        for rep in range(reps):
            artifact, real = adult_artifact(eps)
            for item, k, stop in fits:
                _reset_peak(dev)
                start = _peak_mb(dev)
                fitted, fit_s = _fit_timed(artifact, steps, k, dev, rep, precision, stop)
                peak = _peak_mb(dev)
                if item == "adult":
                    model = fitted
                if item not in items:
                    continue
                tvd = mean_tvd(real, fitted.sample(len(real), seed=rep), artifact.domain)
                row = {**base, "item": item, "epsilon": eps, "rep": rep, "rows_K": k, "steps": fitted.steps,
                       "fit_s": fit_s, "ms_per_step": 1000 * fit_s / fitted.steps, "tvd_2way": tvd[2],
                       "tvd_3way": tvd[3], "peak_mb": peak, "peak_increase_mb": peak - start, "loss_per_entry": fitted.loss / fitted.measured_entries}
                print(f"  {item} eps={eps} rep={rep} K={k}: {fitted.steps} steps in {fit_s:.1f}s "
                      f"({row['ms_per_step']:.1f} ms/step) 2-way {tvd[2]:.4f} 3-way {tvd[3]:.4f} peak {peak:.0f} MB",
                      flush=True)
                out.append(row)
    if "wide" in items:
        wide = wide_artifact(n=wide_rows)
        problem = relaxed.build_problem(wide, dev, wide_rows)
        base_logits = torch_engine.one_way_logits(wide, problem.width)
        for rep in range(reps):
            generator = torch.Generator(device=dev).manual_seed(rep)
            _reset_peak(dev)
            start = _peak_mb(dev)
            logits = torch_engine.init_logits(problem, base_logits, generator)
            fused = {"fused": True} if dev.type == "cuda" else {}
            opt = torch.optim.Adam([logits], lr=torch_engine.DEFAULT_LR, **fused)
            with torch_engine.matmul_precision(dev, precision) as bf16:
                torch_engine.step(logits, opt, problem, bf16)  # warm-up: allocations, kernel selection
                _sync(dev)
                t0 = time.perf_counter()
                for _ in range(wide_steps):
                    torch_engine.step(logits, opt, problem, bf16)
                _sync(dev)
            ms = 1000 * (time.perf_counter() - t0) / wide_steps
            peak = _peak_mb(dev)
            del logits, opt
            print(f"  wide rep={rep}: {ms:.1f} ms/step, peak {peak:.0f} MB", flush=True)
            out.append({**base, "item": "wide 100x32", "rep": rep, "rows_K": wide_rows, "steps": wide_steps,
                        "ms_per_step": ms, "peak_mb": peak, "peak_increase_mb": peak - start})
    if "generate" in items and model is not None:
        for rep in range(reps):
            with tempfile.TemporaryDirectory() as tmp:
                _reset_peak(torch.device("cpu"))
                before = _peak_host_mb()
                t0 = time.perf_counter()
                write_synthetic_table(model, artifact, f"{tmp}/synth", generate_rows, rep, {"engine": model.engine})
                wall = time.perf_counter() - t0
                peak = _peak_host_mb()
                size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(f"{tmp}/synth") for f in fs)
            print(f"  generate rep={rep}: {generate_rows:,} rows in {wall:.1f}s, peak RSS {peak:.0f} MB "
                  f"(+{peak - before:.0f} MB)", flush=True)
            out.append({**base, "item": "generate + write", "rep": rep, "rows_K": model.rows, "rows": generate_rows,
                        "wall_s": wall, "peak_mb": peak, "peak_increase_mb": peak - before,
                        "parquet_mb": size / 2**20})
    for r in out:
        for key, _ in COLUMNS:
            r.setdefault(key, "-")
    return out


COLUMNS = [("item", "item"), ("device", "device"), ("rows_K", "K"), ("steps", "steps"), ("fit_s", "fit s"),
           ("ms_per_step", "ms/step"), ("tvd_2way", "2-way TVD"), ("tvd_3way", "3-way TVD"), ("rows", "rows"),
           ("wall_s", "wall s"), ("peak_mb", "peak MB"), ("peak_increase_mb", "peak - start MB")]
