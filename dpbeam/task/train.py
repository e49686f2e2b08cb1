"""DP-SGD training of the task model on the bounded rows, one example per privacy unit (trusted side).

Mechanism (:func:`train_dpsgd`). What it protects: one privacy unit with all of its rows. Bounding keeps at most k
rows of a unit; those rows are one example (:mod:`dpbeam.task.data`), whose loss is the sum of its rows' losses. Each
step samples every unit independently with probability q (Poisson sampling, q public and fixed before any row is
read), computes each sampled unit's gradient (Opacus per-sample gradients, an example being a unit), clips it to L2
norm C, sums, and adds Gaussian noise N(0, (z C)^2 I). Sensitivity: adding or removing one unit adds or removes one
clipped term, so the L2 sensitivity of the noisy sum is C (not k C: the clip applies to the unit's whole gradient, so
no group-privacy factor is due). Its budget: T steps of the Poisson-subsampled Gaussian with noise multiplier z, whose
RDP the job's :class:`dpbeam.privacy.accountant.ComposedAccountant` composes with the zCDP measurements; z is chosen
there so that the whole job meets the (epsilon, delta) budget, giving DP-SGD ``task.budget_share`` of it.

Everything else (Adam's updates, the learning rate, the initial weights) is post-processing of the noisy sums or
data-independent. The noise and the sampling come from torch generators seeded from the OS (``secrets``), never from
the spec's seed. Opacus runs without ``secure_mode`` (torchcsprng is not a dependency): the Gaussian noise is
floating-point, unlike the measurements' OpenDP discrete Gaussian noise; the release statement says so.

Nothing about the data is printed, logged or raised: training runs exactly T steps whatever the data (an empty
sample is a step on an all-padding example, whose gradient is zero, so the step is noise only).
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from dpbeam.privacy.noise import noise_is_off
from dpbeam.task.data import UnitExamples
from dpbeam.task.model import build_net, init_net


@dataclass(frozen=True)
class DPSGDParams:
    """The public parameters of one DP-SGD run (the accountant fixes them at plan time)."""

    sample_rate: float
    steps: int
    clip: float
    noise_multiplier: float
    learning_rate: float = 0.05


def device_name() -> str:
    """cuda when a GPU is present, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def private_model(net: Any, params: DPSGDParams, noise_generator: Any) -> tuple[Any, Any]:
    """Opacus's per-example gradients (an example is a unit) and its DP optimizer around Adam.

    The optimizer's step clips each example's gradient to L2 norm ``params.clip``, sums (loss reduction "sum": the
    sum is not divided by a data-dependent batch size) and adds N(0, (noise_multiplier * clip)^2) to every coordinate
    (sensitivity ``clip``: one unit's clipped gradient). Under the test-only noise switch the multiplier is 0, and
    nothing trained then can be written (:func:`dpbeam.task.model.write_task_model` refuses)."""
    import torch
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    model = GradSampleModule(net, loss_reduction="sum")
    z = 0.0 if noise_is_off() else params.noise_multiplier
    opt = DPOptimizer(torch.optim.Adam(model.parameters(), lr=params.learning_rate), noise_multiplier=z,
                      max_grad_norm=params.clip, expected_batch_size=None, loss_reduction="sum",
                      generator=noise_generator)
    return model, opt


def unit_losses(net: Any, inputs: Any, targets: Any, mask: Any) -> Any:
    """Each example's loss: the sum over its real rows (mask 1) of the row's cross-entropy of the target's code
    (a class, or a regression target's bin). Shape (units,)."""
    import torch.nn.functional as F

    z = net(inputs)  # (units, k, outputs)
    row = F.cross_entropy(z.reshape(-1, z.shape[-1]), targets.reshape(-1).long(), reduction="none")
    return (row.reshape(targets.shape) * mask).sum(dim=1)


def train_dpsgd(
    examples: UnitExamples,
    outputs: int,
    n_inputs: int,
    hidden: int,
    params: DPSGDParams,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    noise_seed: int | None = None,
    basis: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], str]:
    """Run ``params.steps`` DP-SGD steps over ``examples`` (one per unit) and return the weights and the device.

    Protects: one privacy unit (all of its <= k bounded rows, one example). Sensitivity of each step's gradient sum:
    ``params.clip`` in L2 (one unit's clipped summed gradient). Noise: N(0, (noise_multiplier * clip)^2) per
    coordinate. Budget: the Poisson-subsampled Gaussian, rate ``sample_rate``, for ``steps`` steps; its share of the
    job's budget is set by the accountant's choice of the noise multiplier (see the module doc). ``seed`` only sets
    the initial weights; noise and sampling are seeded from the OS, or from ``noise_seed``, which only tests pass (no
    spec reaches it) so that their statistical thresholds hold for a fixed draw."""
    import torch

    device = device_name()
    threads = torch.get_num_threads()
    if device == "cpu":  # the steps are small: one thread is fastest, and does not crowd a shared machine
        torch.set_num_threads(1)
    try:
        return _train(examples, outputs, n_inputs, hidden, params, seed, progress, device, noise_seed, basis)
    finally:
        torch.set_num_threads(threads)


def _train(examples: UnitExamples, outputs: int, n_inputs: int, hidden: int, params: DPSGDParams,
           seed: int, progress: Callable[[int], None] | None, device: str,
           noise_seed: int | None, basis: np.ndarray | None) -> tuple[dict[str, np.ndarray], str]:
    import torch

    net = build_net(n_inputs, hidden, outputs, basis)
    init_net(net, seed)
    net = net.to(device)
    seeds = np.random.SeedSequence(noise_seed).generate_state(2, np.uint64) if noise_seed is not None else None
    noise_gen = torch.Generator(device=device).manual_seed(int(seeds[0] >> 1) if seeds is not None
                                                           else secrets.randbits(63))
    sample_gen = torch.Generator(device=device).manual_seed(int(seeds[1] >> 1) if seeds is not None
                                                            else secrets.randbits(63))
    model, opt = private_model(net, params, noise_gen)
    x = torch.as_tensor(examples.inputs, device=device)
    y = torch.as_tensor(examples.targets, device=device)
    m = torch.as_tensor(examples.mask, device=device)
    pad_x = torch.full((1,) + tuple(x.shape[1:]), n_inputs - 1, dtype=x.dtype, device=device)
    pad_y = torch.zeros((1,) + tuple(y.shape[1:]), dtype=y.dtype, device=device)
    pad_m = torch.zeros((1,) + tuple(m.shape[1:]), dtype=m.dtype, device=device)
    units = x.shape[0]
    for step in range(params.steps):
        picked = (torch.rand(units, generator=sample_gen, device=device) < params.sample_rate).nonzero().squeeze(1)
        if picked.numel():
            bx, by, bm = x[picked], y[picked], m[picked]
        else:  # an empty Poisson sample: a zero-gradient padding example, so the step adds noise only
            bx, by, bm = pad_x, pad_y, pad_m
        opt.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # the inputs are indices: torch notes that no input needs a gradient
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            unit_losses(model, bx, by, bm).sum().backward()
        opt.step()
        if progress:
            progress(1)
    weights = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in net.named_parameters()}
    return weights, device
