"""Forward sampling from a calibrated junction tree, vectorized in numpy over a whole chunk of rows.

Post-processing only: the tables are a fitted model's clique marginals; nothing here sees data.

Columns are drawn one at a time in reverse elimination order. When a column is drawn, the columns already drawn that
share a junction-tree clique with it (its parents) all lie in one clique, because the elimination order is perfect
for the triangulated graph; the column's conditional given its parents is that clique's marginal projected on
(parents, column) and normalised over the column. Drawing the columns in this order samples exactly the model's
joint distribution.

Each draw is an inverse-CDF lookup done for every row of the chunk at once: the conditional CDFs of all parent
cells are laid end to end, row r shifted by r, so that one ``searchsorted`` of ``r + u`` finds the code for every
row whatever its parent cell.

``method="round"`` (the default) stratifies the uniforms within each parent cell, as mbi's randomized rounding does:
the rows of a cell are put in a random order and the i-th of m gets u = (i + U) / m, so the number of rows that
receive each code is within one of its expected share (independent draws scatter by sqrt(m p (1 - p))). The random
order is fresh for every column, so no spurious dependence on row position or on earlier columns arises.
``method="sample"`` draws independent uniforms.

:meth:`ForwardSampler.sample_blocks` draws a large number of rows in blocks of ``BLOCK_ROWS``, block b from its own
generator ``SeedSequence(seed, spawn_key=(b,))``, on a few threads (numpy releases the GIL in the sorts and searches
that dominate). The blocks and their seeds do not depend on the number of threads, so neither do the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

METHODS = ("round", "sample")
BLOCK_ROWS = 1 << 18  # rows per independently seeded block (262,144)


def default_threads() -> int:
    """Threads for sampling: the machine's cores, at most 4 (beyond that memory bandwidth limits)."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class _Step:
    column: int  # position of the column in the output
    parents: tuple[int, ...]  # output positions of the parents, already drawn
    strides: tuple[int, ...]  # ravel the parents' codes into one cell index
    size: int  # codes of the column
    cdf: np.ndarray  # (parent cells * size,), cell r's CDF shifted by r: nondecreasing overall


def _project(names: tuple[str, ...], table: np.ndarray, keep: tuple[str, ...]) -> np.ndarray:
    summed = table.sum(axis=tuple(i for i, n in enumerate(names) if n not in keep))
    rest = [n for n in names if n in keep]
    return np.transpose(summed, [rest.index(n) for n in keep])


def _shifted_cdf(joint: np.ndarray) -> np.ndarray:
    """(parent sizes..., size) nonnegative table -> the conditional CDFs of every parent cell, cell r shifted by r.

    A parent cell with no mass (never drawn, up to rounding) gets the column's marginal over all cells, so every
    row is a proper CDF ending at exactly 1."""
    size = joint.shape[-1]
    flat = np.clip(joint.reshape(-1, size).astype(np.float64), 0.0, None)
    mass = flat.sum(axis=1, keepdims=True)
    fallback = flat.sum(axis=0)
    fallback = fallback / fallback.sum() if fallback.sum() > 0 else np.full(size, 1.0 / size)
    cond = np.where(mass > 0, flat / np.where(mass > 0, mass, 1.0), fallback)
    cdf = np.cumsum(cond, axis=1)
    cdf = np.minimum(cdf / cdf[:, -1:], 1.0)
    cdf[:, -1] = 1.0
    cdf += np.arange(len(cdf), dtype=np.float64)[:, None]
    return cdf.ravel()


class ForwardSampler:
    """Draw rows of codes from calibrated clique marginals (see the module docstring)."""

    def __init__(
        self,
        names: Sequence[str],
        sizes: Mapping[str, int],
        tables: Mapping[tuple[str, ...], np.ndarray],
        elimination_order: Sequence[str],
    ):
        self.names = list(names)
        position = {n: i for i, n in enumerate(self.names)}
        drawn: list[str] = []
        steps = []
        for col in reversed(list(elimination_order)):
            holding = [c for c in tables if col in c]
            near = {n for c in holding for n in c}
            parents = tuple(n for n in drawn if n in near)
            home = next((c for c in holding if set(parents) <= set(c)), None)
            if home is None:
                raise ValueError(f"no junction-tree clique holds {col!r} with its parents {parents}: not a perfect order")
            joint = _project(home, np.asarray(tables[home], dtype=np.float64), parents + (col,))
            psizes = [sizes[p] for p in parents]
            strides = tuple(int(np.prod(psizes[i + 1 :], dtype=np.int64)) for i in range(len(parents)))
            steps.append(_Step(position[col], tuple(position[p] for p in parents), strides, sizes[col],
                               _shifted_cdf(joint)))
            drawn.append(col)
        missing = set(self.names) - set(drawn)
        if missing:
            raise ValueError(f"the elimination order misses columns {sorted(missing)}")
        self.steps = tuple(steps)
        largest = max(sizes[n] for n in self.names)
        self.dtype = np.min_scalar_type(max(largest - 1, 0))

    def sample(self, rows: int, rng: np.random.Generator, method: str = "round") -> np.ndarray:
        """Codes, shape (rows, columns) in ``names`` order (column-major, so each column is contiguous)."""
        if method not in METHODS:
            raise ValueError(f"sampling method {method!r} is not available; use one of {METHODS}")
        out = np.empty((rows, len(self.names)), dtype=self.dtype, order="F")
        if rows == 0:
            return out
        for step in self.steps:
            cell = self._cells(step, out)
            if method == "round":
                rows_in_order, cells, keys = _stratified_keys(cell, rng)
                out[rows_in_order, step.column] = _codes_of_sorted_keys(step, cells, keys)
            else:
                at = np.searchsorted(step.cdf, cell + rng.random(rows), side="right")
                out[:, step.column] = np.clip(at - cell.astype(np.int64) * step.size, 0, step.size - 1)
        return out

    def sample_blocks(self, rows: int, seed: int, method: str = "round", threads: int | None = None) -> np.ndarray:
        """``rows`` rows drawn in blocks of ``BLOCK_ROWS`` (see the module docstring): the same rows for a seed
        whatever ``threads`` (default :func:`default_threads`)."""
        if method not in METHODS:
            raise ValueError(f"sampling method {method!r} is not available; use one of {METHODS}")
        out = np.empty((rows, len(self.names)), dtype=self.dtype, order="F")
        starts = range(0, rows, BLOCK_ROWS)

        def draw(block: int) -> None:
            lo = starts[block]
            hi = min(lo + BLOCK_ROWS, rows)
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block,)))
            out[lo:hi] = self.sample(hi - lo, rng, method)

        threads = default_threads() if threads is None else max(1, int(threads))
        if threads == 1 or len(starts) <= 1:
            for b in range(len(starts)):
                draw(b)
        else:
            with ThreadPoolExecutor(min(threads, len(starts))) as pool:
                list(pool.map(draw, range(len(starts))))
        return out

    @staticmethod
    def _cells(step: _Step, out: np.ndarray) -> np.ndarray:
        """Every row's parent cell: the raveled index of its parents' codes (its own small dtype when it is one
        parent's code)."""
        if not step.parents:
            return np.zeros(len(out), dtype=np.uint8)
        if len(step.parents) == 1:
            return out[:, step.parents[0]]
        cell = np.zeros(len(out), dtype=np.int64)
        for p, stride in zip(step.parents, step.strides):
            cell += out[:, p].astype(np.int64) * stride
        return cell


def _stratified_keys(cell: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows grouped by cell, in a fresh random order within each cell; their cells in that order; and their keys
    cell + (i + U) / m for the i-th of a cell's m rows, nondecreasing in that order."""
    n = len(cell)
    perm = rng.permutation(n)
    top = int(cell.max())
    small = np.uint8 if top < 1 << 8 else np.uint16 if top < 1 << 16 else np.int64  # numpy radix-sorts <= 16 bits
    shuffled = cell[perm].astype(small, copy=False)
    if top == 0:
        rows_in_order, sorted_cells = perm, shuffled
        starts, lengths = np.zeros(1, dtype=np.int64), np.array([n])
    else:
        order = np.argsort(shuffled, kind="stable")
        rows_in_order, sorted_cells = perm[order], shuffled[order]
        starts = np.flatnonzero(np.concatenate(([True], sorted_cells[1:] != sorted_cells[:-1])))
        lengths = np.diff(np.append(starts, n))
    rank = np.arange(n, dtype=np.float64)
    if len(starts) > 1:
        rank -= np.repeat(starts, lengths)
    u = (rank + rng.random(n)) / (n if len(starts) == 1 else np.repeat(lengths, lengths))
    np.minimum(u, _BELOW_ONE, out=u)
    return rows_in_order, sorted_cells, u + sorted_cells


_BELOW_ONE = 1.0 - 2.0**-53


def _codes_of_sorted_keys(step: _Step, cells: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The code of every key (nondecreasing keys): the position of the first CDF entry above it, less its cell's
    offset. With fewer CDF entries than keys, the CDF is merged into the keys instead of the keys searched in it."""
    n, m = len(keys), len(step.cdf)
    if m < n:
        below = np.searchsorted(keys, step.cdf, side="left")  # keys below each CDF entry
        at = np.repeat(np.arange(m + 1), np.diff(np.concatenate(([0], below, [n]))))
    else:
        at = np.searchsorted(step.cdf, keys, side="right")
    at -= cells.astype(np.int64) * step.size
    return np.clip(at, 0, step.size - 1, out=at)
