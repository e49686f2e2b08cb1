"""The torch synthesis engine: relaxed projection fitted by Adam, rows by randomized rounding; CPU or GPU.

Post-processing only. The engine reads a :class:`~dpbeam.measurements.MeasurementsArtifact` (noisy marginals, public
domains, the compression chosen from noisy counts) and nothing else; it imports nothing that reads a source. Whatever
it computes, on whatever machine, is a function of differentially private outputs, so it cannot weaken the
guarantee.

Fit (Aydore et al. 2021, "relaxed adaptive projection"): a table of K rows, each row one probability vector per column
held as logits ``[K, columns, widest column]``; Adam minimizes :func:`dpbeam.synth.relaxed.loss`, the noise-scaled
squared error of the table's marginals against every measurement. All 2-way marginals come from one Gram matrix, so a
step is a few large kernels (see :mod:`dpbeam.synth.relaxed`). Every row starts at the columns' noisy 1-way
distributions (plus a little noise), and the fit stops when the loss per measured entry reaches the level the true
table would score (1: the discrepancy principle, see STOP_AT), before it starts fitting noise. :func:`step` is one
Adam step with every input passed in; :func:`fit` is the visible loop around it.

Sample: each output row is one relaxed row rounded at random (every column drawn from that row's probabilities). Rows
are stratified: a call for n rows uses every relaxed row n // K times and a random n % K of them once more, then
shuffles. Any number of rows; temporaries are bounded by a block size (the caller streams chunks of rows).

Device: cuda when available, else cpu (``device=`` forces one). On CUDA matmuls run in TF32 by default (inputs
rounded to 10 bits, float32 accumulation: errors average out over K rows, far below the noise); ``precision="bf16"``
rounds the Gram matrix's inputs to bfloat16 but keeps float32 accumulation and output. On CPU everything is float32.
A seed makes fit and sample reproducible on one device (bitwise on CPU); random draws come from a
``torch.Generator`` of that seed, never from torch's global generator.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from dpbeam.measurements import MeasurementsArtifact
from dpbeam.synth import relaxed

ENGINE = "torch"
# Adam's step size on the logits, and the spread of the initial logits around the 1-way estimate. On Adult (eps = 1,
# all 2-way marginals measured) lr 0.02-0.3 reached the same loss from a random start; 0.05 from the 1-way start
# crosses the stopping level in ~150 steps, with the same path at K = 2048 and K = 8192.
DEFAULT_LR = 0.05
INIT_SCALE = 0.1
# Stop when the loss per measured entry falls to this. Each term of the loss is (w * x - y)^2 / sigma^2, and at the
# true table x it is a squared standard normal (the noise over its scale), so the truth scores 1 per entry on average;
# going further fits noise (Morozov's discrepancy principle). On Adult at eps = 1 the relaxed table's mean 2-way TVD
# is 0.038 where the loss per entry crosses 1.0, then 0.043 at 0.97 and 0.050 at 0.95; at eps 0.3 and 4 the best TVD
# along the path is within 0.004 of the value at the crossing. The rule reads only noisy measurements and their
# public scales.
STOP_AT = 1.0
CHECK_EVERY = 10
# The default K keeps one [K, columns, widest] float32 tensor within 2^27 elements (512 MiB).
MAX_TABLE_ELEMENTS = 1 << 27
# Elements of one sampling block (float64): 32 MiB on CPU, 256 MiB on CUDA.
SAMPLE_BLOCK = {"cpu": 1 << 22, "cuda": 1 << 25}

Progress = Callable[[int, float], None]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or cuda when available, else cpu."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_rows(artifact: MeasurementsArtifact) -> int:
    """K: the estimated row count, capped so that one relaxed tensor stays within MAX_TABLE_ELEMENTS."""
    sizes = artifact.model_sizes.values()
    cap = MAX_TABLE_ELEMENTS // (len(sizes) * max(sizes))
    return max(1, min(int(round(artifact.estimated_total())), cap))


@contextlib.contextmanager
def matmul_precision(device: torch.device, precision: str = "auto") -> Iterator[bool]:
    """Set float32 matmul precision for the fit and restore it after; yields whether the Gram runs in bf16.

    ``auto``: tf32 on cuda, fp32 on cpu. ``fp32``, ``tf32`` or ``bf16`` (the last two on cuda only)."""
    if precision not in ("auto", "fp32", "tf32", "bf16"):
        raise ValueError(f"precision {precision!r}: use auto, fp32, tf32 or bf16")
    if precision in ("tf32", "bf16") and device.type != "cuda":
        raise ValueError(f"precision {precision!r} needs a cuda device; the cpu path is float32")
    before = torch.get_float32_matmul_precision()
    if device.type == "cuda" and precision != "fp32":
        torch.set_float32_matmul_precision("high")  # TF32
    try:
        yield precision == "bf16"
    finally:
        torch.set_float32_matmul_precision(before)


def one_way_logits(artifact: MeasurementsArtifact, width: int) -> np.ndarray:
    """Log-probabilities ``[columns, width]`` of each column from its noisy 1-way measurements (inverse-variance
    mean of ``values / weights`` per cell, clipped at 0, plus half a count); uniform for a column with none."""
    names = artifact.domain.names
    sizes = artifact.model_sizes
    num = {n: np.zeros(sizes[n]) for n in names}
    den = {n: np.zeros(sizes[n]) for n in names}
    for m in artifact.measurements:
        if len(m.clique) == 1 and m.groups is None:
            w = np.ones(m.values.shape) if m.weights is None else np.asarray(m.weights, dtype=np.float64)
            prec = (w / m.stddev) ** 2  # precision of values / w
            num[m.clique[0]] += prec * np.divide(m.values, w, out=np.zeros(w.shape), where=w != 0)
            den[m.clique[0]] += prec
    out = np.zeros((len(names), width), dtype=np.float32)
    for j, n in enumerate(names):
        est = np.maximum(np.divide(num[n], den[n], out=np.zeros_like(num[n]), where=den[n] > 0), 0.0) + 0.5
        out[j, : sizes[n]] = np.log(est / est.sum())
    return out


def init_logits(problem: relaxed.RelaxedProblem, base: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """Logits ``[K, columns, widest]``: every row at ``base`` (see :func:`one_way_logits`) plus N(0, INIT_SCALE^2)."""
    shape = (problem.rows, len(problem.sizes), problem.width)
    noise = torch.randn(shape, generator=generator, device=generator.device) * INIT_SCALE
    return (noise + torch.as_tensor(base, device=generator.device)).requires_grad_()


def step(logits: torch.Tensor, optimizer: torch.optim.Optimizer, problem: relaxed.RelaxedProblem,
         bf16: bool = False) -> torch.Tensor:
    """One Adam step on the relaxed loss; returns the loss before the step (a tensor: reading it syncs a GPU)."""
    optimizer.zero_grad(set_to_none=True)
    value = relaxed.loss(logits, problem, bf16)
    value.backward()
    optimizer.step()
    return value.detach()


def fit(
    artifact: MeasurementsArtifact,
    steps: int = 2000,
    rows: int | None = None,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    device: str | torch.device | None = None,
    precision: str = "auto",
    stop_at: float | None = STOP_AT,
    progress: Progress | None = None,
    report_every: int = 100,
) -> "TorchModel":
    """Fit a relaxed table of ``rows`` rows (default :func:`default_rows`) to every measurement in the artifact.

    At most ``steps`` Adam steps; every CHECK_EVERY steps the fit stops once the loss per measured entry is at most
    ``stop_at`` (None: run every step). ``progress(step, loss)`` is called every ``report_every`` steps and at the
    end; each call and each check reads the loss, which syncs a GPU."""
    dev = pick_device(device)
    k = rows or default_rows(artifact)
    problem = relaxed.build_problem(artifact, dev, k)
    generator = torch.Generator(device=dev).manual_seed(seed)
    logits = init_logits(problem, one_way_logits(artifact, problem.width), generator)
    optimizer = torch.optim.Adam([logits], lr=lr, **({"fused": True} if dev.type == "cuda" else {}))
    target = None if stop_at is None else stop_at * problem.measured_entries
    taken = 0
    with matmul_precision(dev, precision) as bf16:
        for taken in range(1, steps + 1):
            value = step(logits, optimizer, problem, bf16)
            done = target is not None and taken % CHECK_EVERY == 0 and float(value) <= target
            if progress is not None and (done or taken % report_every == 0 or taken == steps):
                progress(taken, float(value))
            if done:
                break
        with torch.no_grad():
            final = float(relaxed.loss(logits, problem, bf16))
            probs = relaxed.flat(relaxed.probabilities(logits, problem), problem).contiguous()
    return TorchModel(probs, list(problem.names), problem.sizes, problem.offsets, problem.total, str(dev), final, taken,
                      problem.measured_entries)


@dataclass
class TorchModel:
    """A fitted relaxed table: ``probs[i]`` is row i's probability vectors, columns side by side (``[K, bins]``)."""

    probs: torch.Tensor
    names: list[str]
    sizes: tuple[int, ...]
    offsets: tuple[int, ...]
    total: float
    device: str
    loss: float  # after the last step
    steps: int  # steps taken
    measured_entries: int
    engine: str = ENGINE

    @property
    def rows(self) -> int:
        return int(self.probs.shape[0])

    def marginal(self, clique: tuple[str, ...]) -> np.ndarray:
        """The relaxed table's marginal on a clique, in counts: (N / K) * sum over rows of the outer products."""
        blocks = [self.probs[:, self.offsets[j] : self.offsets[j] + self.sizes[j]]
                  for j in (self.names.index(n) for n in clique)]
        axes = relaxed.einsum_letters(len(blocks))
        counts = torch.einsum(",".join(f"z{x}" for x in axes) + f"->{axes}", *(b.double() for b in blocks))
        return counts.cpu().numpy() * (self.total / self.rows)

    def sample(self, rows: int, seed: int) -> np.ndarray:
        """``rows`` rows of model-domain codes ``(rows, columns)``, by randomized rounding of the relaxed rows."""
        dev = self.probs.device
        k, bins, d = self.rows, self.probs.shape[1], len(self.sizes)
        generator = torch.Generator(device=dev).manual_seed(seed)
        passes, extra_n = divmod(rows, k)
        draws = passes + (extra_n > 0)  # draws per relaxed row; the last is kept only for the extra rows
        extra = torch.zeros(k, dtype=torch.bool, device=dev)
        extra[torch.randperm(k, generator=generator, device=dev)[:extra_n]] = True
        offsets = torch.as_tensor(self.offsets, device=dev)
        sizes = torch.as_tensor(self.sizes, device=dev)
        last = offsets + sizes - 1
        block = max(1, SAMPLE_BLOCK.get(dev.type, SAMPLE_BLOCK["cpu"]) // max(bins, draws * d))
        pieces = []
        for start in range(0, k if draws else 0, block):
            stop = min(k, start + block)
            cdf = self.probs[start:stop].double().cumsum(1)  # column j spans (cdf[o_j - 1], cdf[last_j]]
            hi = cdf.index_select(1, last)
            lo = torch.cat([hi.new_zeros(stop - start, 1), hi[:, :-1]], dim=1)
            u = torch.rand(stop - start, draws, d, generator=generator, device=dev, dtype=torch.float64)
            target = (lo[:, None, :] + u * (hi - lo)[:, None, :]).reshape(stop - start, draws * d)
            pos = torch.searchsorted(cdf, target, right=True).reshape(stop - start, draws, d)
            codes = torch.minimum((pos - offsets).clamp_(min=0), sizes - 1)
            keep = torch.arange(draws, device=dev)[None, :] < passes
            keep = keep | extra[start:stop, None]
            pieces.append(codes[keep])
        out = torch.cat(pieces) if pieces else torch.zeros(0, d, dtype=torch.long, device=dev)
        out = out[torch.randperm(rows, generator=generator, device=dev)]
        return out.cpu().numpy()
