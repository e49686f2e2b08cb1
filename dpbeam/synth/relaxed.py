"""The relaxed-projection loss in torch: marginals of a table of K rows held as per-column probabilities.

Post-processing only: the loss compares a relaxed table with the artifact's noisy measurements and nothing else.

A relaxed row is one probability vector per column. Its "one-hot" table is ``P`` of shape ``[K, total bins]`` (the
columns' vectors side by side), and the marginal of the relaxed table on a clique is the sum over rows of the outer
product of the clique's vectors, scaled to the measurements' total: ``(N / K) * sum_rows``. That makes

* every 1-way marginal one column sum of ``P``,
* every 2-way marginal one block of the Gram matrix ``P^T P`` (one large matmul for all pairs at once),
* a 3-way (or wider) marginal an einsum over K; cliques of equal shape are batched into one einsum.

The loss is ``sum over measurements of ||(w * marginal - y) / sigma||^2`` (``w`` = 1 unless the measurement carries
weights, as MST's merged cells do). Everything that depends only on the artifact (which entries of ``P^T P`` are
measured, ``w / sigma``, ``y / sigma``) is built once into a :class:`RelaxedProblem`; a step is then a handful of
large kernels whatever the number of marginals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dpbeam.measurements import MeasurementsArtifact
from dpbeam.synth.mirror import group_index

# A batched einsum for wide cliques materializes [K, cliques, product of all but the last axis]; cap its elements.
EINSUM_BUDGET = 1 << 26


@dataclass(frozen=True)
class WideGroup:
    """Measured cliques of one shape and order >= 3, batched: ``columns[i]`` holds the i-th axis' column of each."""

    columns: tuple[torch.Tensor, ...]  # each [n] long
    shape: tuple[int, ...]
    a: torch.Tensor  # w * (N / K) / sigma, [n * prod(shape)]
    b: torch.Tensor  # y / sigma, same


@dataclass(frozen=True)
class RelaxedProblem:
    """The artifact's measurements as index tensors over a relaxed table, built once per fit.

    Layout: column j has ``sizes[j]`` bins, padded to ``width`` (the widest column) in the logits ``[K, d, width]``;
    ``keep`` picks the real bins out of the padded ``d * width`` (None when no column is padded); ``offsets[j]`` is
    column j's first bin in ``P`` (``[K, bins]``)."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    offsets: tuple[int, ...]
    width: int
    rows: int
    total: float
    pad: torch.Tensor | None  # [d, width], 0 on real bins and -inf on padding
    keep: torch.Tensor | None  # [bins] long
    one_idx: torch.Tensor  # [E1] index into column sums of P
    one_a: torch.Tensor  # w * (N / K) / sigma
    one_b: torch.Tensor  # y / sigma
    two_idx: torch.Tensor  # [E2] index into P^T P, flattened
    two_a: torch.Tensor
    two_b: torch.Tensor
    wide: tuple[WideGroup, ...]
    # coarse measurements (groups of codes): the measured entry each index above adds into, None when every
    # measured entry is one cell (then one_a/one_b, two_a/two_b align with one_idx, two_idx)
    one_slot: torch.Tensor | None = None
    two_slot: torch.Tensor | None = None

    @property
    def bins(self) -> int:
        return self.offsets[-1] + self.sizes[-1]

    @property
    def measured_entries(self) -> int:
        return int(self.one_a.numel() + self.two_a.numel() + sum(g.a.numel() for g in self.wide))


def build_problem(artifact: MeasurementsArtifact, device: torch.device | str, rows: int) -> RelaxedProblem:
    """Index tensors for every measurement of ``artifact`` (model domain), for a relaxed table of ``rows`` rows.

    The scale N / K (N: the artifact's estimate of the row count) is folded into ``w / sigma`` here."""
    names = tuple(artifact.domain.names)
    msizes = artifact.model_sizes
    sizes = tuple(msizes[n] for n in names)
    offsets = tuple(int(x) for x in np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    col = {n: j for j, n in enumerate(names)}
    width, bins = max(sizes), sum(sizes)
    total = float(artifact.estimated_total())
    scale = total / rows

    pad = keep = None
    if any(s != width for s in sizes):
        mask = np.arange(width)[None, :] < np.asarray(sizes)[:, None]
        pad = torch.where(torch.as_tensor(mask), 0.0, float("-inf")).to(device=device, dtype=torch.float32)
        keep = torch.as_tensor(np.flatnonzero(mask.ravel()), device=device)

    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("i1", "s1", "a1", "b1", "i2", "s2", "a2", "b2")}
    slots = {"1": 0, "2": 0}
    coarse = False
    by_shape: dict[tuple[int, ...], list] = {}
    for m in artifact.measurements:
        cols = [col[n] for n in m.clique]
        shape = tuple(sizes[j] for j in cols)
        measured = shape if m.groups is None else tuple(int(g.max()) + 1 for g in m.groups)
        if tuple(m.values.shape) != measured or (m.groups is not None and tuple(len(g) for g in m.groups) != shape):
            raise ValueError(f"measurement on {m.clique} has shape {m.values.shape}, the model domain says {shape}")
        w = np.ones(measured) if m.weights is None else np.asarray(m.weights, dtype=np.float64).reshape(measured)
        a, b = (w * scale / m.stddev).ravel(), (np.asarray(m.values, dtype=np.float64) / m.stddev).ravel()
        # the measured entry (slot) each cell of the clique adds into: itself, or its group's
        slot = np.arange(int(np.prod(shape))) if m.groups is None else group_index(m.groups)
        coarse = coarse or m.groups is not None
        if len(cols) in (1, 2):
            key = str(len(cols))
            if len(cols) == 1:
                parts["i1"].append(offsets[cols[0]] + np.arange(shape[0]))
            else:
                r = offsets[cols[0]] + np.arange(shape[0])
                c = offsets[cols[1]] + np.arange(shape[1])
                parts["i2"].append((r[:, None] * bins + c[None, :]).ravel())
            parts["s" + key].append(slots[key] + slot)
            slots[key] += a.size
            parts["a" + key].append(a)
            parts["b" + key].append(b)
        elif m.groups is not None:
            raise ValueError(f"the torch engine takes coarse measurements of one or two columns; {m.clique} has "
                             f"{len(cols)}: use synthesizer.engine: pgm")
        else:
            by_shape.setdefault(shape, []).append((cols, a, b))

    def cat(key: str, dtype: torch.dtype) -> torch.Tensor:
        arr = np.concatenate(parts[key]) if parts[key] else np.zeros(0)
        return torch.as_tensor(arr, dtype=dtype, device=device)

    wide = []
    for shape, items in by_shape.items():
        per_batch = max(1, EINSUM_BUDGET // (max(rows, 1) * int(np.prod(shape[:-1]))))
        for s in range(0, len(items), per_batch):
            chunk = items[s : s + per_batch]
            wide.append(
                WideGroup(
                    columns=tuple(
                        torch.as_tensor([c[0][ax] for c in chunk], device=device) for ax in range(len(shape))
                    ),
                    shape=shape,
                    a=torch.as_tensor(np.concatenate([c[1] for c in chunk]), dtype=torch.float32, device=device),
                    b=torch.as_tensor(np.concatenate([c[2] for c in chunk]), dtype=torch.float32, device=device),
                )
            )
    return RelaxedProblem(
        names=names, sizes=sizes, offsets=offsets, width=width, rows=rows, total=total, pad=pad,
        keep=keep, one_idx=cat("i1", torch.long), one_a=cat("a1", torch.float32), one_b=cat("b1", torch.float32),
        two_idx=cat("i2", torch.long), two_a=cat("a2", torch.float32), two_b=cat("b2", torch.float32),
        wide=tuple(wide), one_slot=cat("s1", torch.long) if coarse else None,
        two_slot=cat("s2", torch.long) if coarse else None,
    )


def probabilities(logits: torch.Tensor, problem: RelaxedProblem) -> torch.Tensor:
    """Per-column softmax of padded logits ``[K, d, width]`` in one op; padding gets probability 0."""
    return torch.softmax(logits if problem.pad is None else logits + problem.pad, dim=-1)


def flat(probs: torch.Tensor, problem: RelaxedProblem) -> torch.Tensor:
    """``P``, ``[K, bins]``: the real bins of every column side by side."""
    p = probs.reshape(probs.shape[0], -1)
    return p if problem.keep is None else p.index_select(1, problem.keep)


class _Gram(torch.autograd.Function):
    """``P^T P``, with the one-matmul backward ``dP = P (dG + dG^T)`` (autograd's default would do two).

    ``bf16``: inputs rounded to bfloat16, products accumulated and returned in float32 (CUDA only; needs a torch
    whose ``mm`` takes ``out_dtype``)."""

    @staticmethod
    def forward(ctx, p: torch.Tensor, bf16: bool) -> torch.Tensor:
        ctx.save_for_backward(p)
        ctx.bf16 = bf16
        if bf16:
            h = p.to(torch.bfloat16)
            return torch.mm(h.t(), h, out_dtype=torch.float32)
        return p.t() @ p

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (p,) = ctx.saved_tensors
        g = grad + grad.t()
        if ctx.bf16:
            return torch.mm(p.to(torch.bfloat16), g.to(torch.bfloat16), out_dtype=torch.float32), None
        return p @ g, None


def gram(p: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    return _Gram.apply(p, bf16)


def einsum_letters(n: int) -> str:
    """Einsum letters for a clique's axes ("z" is the row axis and "n" the batch axis)."""
    return "abcdefghijklmopqrstuvwxy"[:n]


def wide_marginals(probs: torch.Tensor, group: WideGroup) -> torch.Tensor:
    """Unscaled marginals (sums over rows) of a batch of equal-shape cliques: ``[n, *shape]``."""
    axes = einsum_letters(len(group.shape))
    ops = [probs.index_select(1, cols)[:, :, :size] for cols, size in zip(group.columns, group.shape)]
    return torch.einsum(",".join(f"zn{x}" for x in axes) + f"->n{axes}", *ops)


def _slots(cells: torch.Tensor, slot: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The measured entries from the clique cells: the cells themselves, or their sums within each coarse
    measurement's groups."""
    if slot is None:
        return cells
    return like.new_zeros(like.shape).index_add(0, slot, cells)


def loss(logits: torch.Tensor, problem: RelaxedProblem, bf16: bool = False) -> torch.Tensor:
    """``sum ||(w * marginal - y) / sigma||^2`` over every measurement; a pure function of the logits."""
    if logits.shape[0] != problem.rows:
        raise ValueError(f"logits hold {logits.shape[0]} rows; the problem was built for {problem.rows}")
    probs = probabilities(logits, problem)
    p = flat(probs, problem)
    total = logits.new_zeros(())
    if problem.one_idx.numel():
        r = problem.one_a * _slots(p.sum(0)[problem.one_idx], problem.one_slot, problem.one_a) - problem.one_b
        total = total + (r * r).sum()
    if problem.two_idx.numel():
        cells = gram(p, bf16).reshape(-1)[problem.two_idx]
        r = problem.two_a * _slots(cells, problem.two_slot, problem.two_a) - problem.two_b
        total = total + (r * r).sum()
    for group in problem.wide:
        r = group.a * wide_marginals(probs, group).reshape(-1) - group.b
        total = total + (r * r).sum()
    return total
