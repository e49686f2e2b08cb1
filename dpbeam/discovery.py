"""DP discovery of what the spec leaves open: categorical values, numeric bounds, and the contribution bound k.

Each discovery is two halves. An :class:`~dpbeam.aggregate.Aggregation` computes exact, mergeable statistics on
the engine (next to the data); a DP selection on the driver turns them into public domain facts, charged to the
``discovery`` stage of the budget plan. The statistics never leave the trusted side.

- **k** (``max_rows_per_unit: auto``): a histogram of units by their number of rows, over a public geometric grid,
  released with Gaussian noise (a unit is one count in one cell: L2 sensitivity 1); k is the q-quantile (default
  q = 0.9) of the noisy histogram (see :func:`noisy_quantiles`).
- **categorical values**: after bounding to k rows per unit, each value's number of distinct units; values are kept by
  OpenDP's Gaussian thresholding (Rogers 2023): a unit touches at most k values (L0 = k) and adds 1 to each
  (L_inf = 1), so L2 <= sqrt(k). Thresholding is approximate zCDP: it spends rho and a part of delta.
- **numeric / datetime bounds**: after bounding, counts of values in the cells of a public grid (log-spaced for
  numbers, monthly for dates), released with Gaussian noise (a unit adds at most k values: L2 sensitivity k); the
  bounds are the grid edges around the 0.01- and 0.99-quantiles of the noisy histogram.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dpbeam.aggregate import UNIT_H1, UNIT_H2
from dpbeam.privacy._opendp import dp
from dpbeam.privacy.accountant import ZCDPAccountant
from dpbeam.privacy.noise import add_discrete_gaussian, gaussian_sigma

STAGE = "discovery"
K_GRID = np.unique(np.round(np.geomspace(1, 100_000, 61)).astype(np.int64))
LOW_Q, HIGH_Q = 0.01, 0.99
_MAG = 10.0 ** (np.arange(-12, 49) / 4.0)  # 1e-3 .. 1e12, four steps per decade
NUMBER_GRID = np.unique(np.concatenate([-_MAG[::-1], [0.0], _MAG]))
DATETIME_GRID = (
    np.arange(np.datetime64("1900-01"), np.datetime64("2101-01")).astype("datetime64[us]").astype(np.int64)
)


# ----------------------------------------------------------------------------------------------------------------------
# Statistics (engine side)


def _unit_ids(prepared: pa.RecordBatch) -> np.ndarray | None:
    """One 16-byte value per row naming its unit (both 64-bit words of the 128-bit unit hash, never folded: two
    units that merged would double a statistic's sensitivity), or None for row-level jobs."""
    if UNIT_H1 not in prepared.schema.names:
        return None
    words = np.stack([prepared.column(UNIT_H1).to_numpy(), prepared.column(UNIT_H2).to_numpy()], axis=1)
    return np.ascontiguousarray(words, dtype=np.uint64).view(np.dtype((np.void, 16))).ravel()


class RowsPerUnit:
    """How many units have c rows, for c on ``K_GRID`` (counts above the grid land in its last cell).

    Run with no bounding (k = infinity): every unit counts once, whatever its number of rows."""

    columns: list[str] = []

    def prepare(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return pa.record_batch({"__one": pa.array(np.zeros(batch.num_rows, np.uint8))})

    def row_keys(self, prepared: pa.RecordBatch) -> np.ndarray:
        return np.zeros((prepared.num_rows, 0), dtype=np.uint8)

    def partial(self, prepared: pa.RecordBatch) -> np.ndarray:
        ids = _unit_ids(prepared)
        if ids is None or len(ids) == 0:
            return self.zero()
        _, rows = np.unique(ids, return_counts=True)
        cell = np.minimum(np.searchsorted(K_GRID, rows, side="left"), len(K_GRID) - 1)
        return np.bincount(cell, minlength=len(K_GRID)).astype(np.int64)

    def merge(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    def zero(self) -> np.ndarray:
        return np.zeros(len(K_GRID), dtype=np.int64)


@dataclass(frozen=True)
class DiscoveryTask:
    """One column to discover: ``kind`` is categorical, integer, float or datetime."""

    column: str
    kind: str


def _numeric_values(arr: pa.Array, kind: str) -> np.ndarray:
    """Non-null values as float64 (datetimes: microseconds since the epoch)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    arr = pc.drop_null(arr)
    if kind == "datetime":
        t = arr.type
        target = pa.timestamp("us") if pa.types.is_date(t) else pa.timestamp("us", tz=t.tz)
        return arr.cast(target, safe=False).cast(pa.int64()).to_numpy().astype(np.float64)
    return arr.cast(pa.float64()).to_numpy(zero_copy_only=False)


def grid_for(kind: str) -> np.ndarray:
    return DATETIME_GRID.astype(np.float64) if kind == "datetime" else NUMBER_GRID


class DiscoveryStats:
    """Exact statistics for a set of discovery tasks over the bounded table.

    Summary: {column: Counter(value -> distinct units)} for categorical tasks and {column: int64 counts per grid cell,
    cell i holding values in (grid[i-1], grid[i]]} for numeric ones. The bounding keys are per-column hashes of the
    raw values, so each unit's kept rows are a function of its own rows and the run key."""

    def __init__(self, tasks: Sequence[DiscoveryTask]):
        self.tasks = list(tasks)
        self.columns = [t.column for t in self.tasks]

    def prepare(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays([batch.column(c) for c in self.columns], self.columns)

    def row_keys(self, prepared: pa.RecordBatch) -> np.ndarray:
        from pandas.util import hash_array

        keys = []
        for c in self.columns:
            values = prepared.column(c).to_numpy(zero_copy_only=False)
            keys.append(hash_array(np.asarray(values, dtype=object), categorize=False))
        return np.stack(keys, axis=1) if keys else np.zeros((prepared.num_rows, 0), np.uint64)

    def partial(self, prepared: pa.RecordBatch) -> dict[str, Any]:
        ids = _unit_ids(prepared)
        out: dict[str, Any] = {}
        for t in self.tasks:
            arr = prepared.column(t.column)
            if t.kind == "categorical":
                if pa.types.is_dictionary(arr.type):
                    arr = arr.dictionary_decode()
                present = pc.is_valid(arr).to_numpy(zero_copy_only=False)
                values = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object)[present]
                if ids is not None:  # distinct (unit, value) pairs
                    pairs = set(zip(ids[present].tolist(), values.tolist()))
                    out[t.column] = Counter(v for _, v in pairs)
                else:
                    out[t.column] = Counter(values.tolist())
            else:
                grid = grid_for(t.kind)
                x = _numeric_values(arr, t.kind)
                cell = np.minimum(np.searchsorted(grid, x, side="left"), len(grid) - 1)
                out[t.column] = np.bincount(cell, minlength=len(grid)).astype(np.int64)
        return out

    def merge(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        return {c: a[c] + b[c] for c in a}

    def zero(self) -> dict[str, Any]:
        return {t.column: Counter() if t.kind == "categorical" else np.zeros(len(grid_for(t.kind)), np.int64)
                for t in self.tasks}


# ----------------------------------------------------------------------------------------------------------------------
# DP selections (driver side)


def noisy_quantiles(
    cell_counts: np.ndarray, sensitivity: float, rho: float, qs: Sequence[float]
) -> tuple[list[int], float, float]:
    """DP quantiles of values summarized by exact counts per public grid cell.

    One discrete Gaussian release of the cell counts (L2 sensitivity ``sensitivity``: one unit adds at most that many
    values, in the worst case all to one cell), then post-processing only: cells whose noisy count is below a cut-off
    are zeroed (so the many empty cells of a wide grid add no false mass), and for each q the answer is the first cell
    where the cumulative count reaches q times the total. Returns (cell indices, rho spent, sigma).
    The cut-off is sigma sqrt(2 ln(100 cells)): by the Gaussian tail bound the expected number of empty cells whose
    noise passes it is at most 0.01, whatever the size of the grid.

    A histogram is used rather than the exponential mechanism on -|#below(c) - q n| because on a public grid every
    candidate beyond the data ties on that score, and the mechanism would pick among them uniformly."""
    sigma = gaussian_sigma(rho, sensitivity)
    noisy, spent = add_discrete_gaussian(np.asarray(cell_counts, dtype=np.int64), sigma, sensitivity)
    cut = sigma * math.sqrt(2 * math.log(100 * len(noisy)))
    kept = np.where(noisy >= cut, noisy, 0).astype(np.float64)
    if kept.sum() <= 0:  # nothing stands out of the noise: fall back to the single largest noisy cell
        kept = np.zeros(len(noisy))
        kept[int(np.argmax(noisy))] = 1.0
    cdf = np.cumsum(kept) / kept.sum()
    cells = [int(min(np.searchsorted(cdf, q - 1e-12, side="left"), len(cdf) - 1)) for q in qs]
    return cells, spent, sigma


def choose_k(rows_per_unit: np.ndarray, q: float, accountant: ZCDPAccountant, rho: float) -> int:
    """k = a DP q-quantile of rows per unit (sensitivity 1: a unit is one count in one cell)."""
    (cell,), spent, sigma = noisy_quantiles(rows_per_unit, 1.0, rho, [q])
    k = int(K_GRID[cell])
    accountant.charge(STAGE, "discrete Gaussian (histogram of rows per unit)", spent, sigma=sigma, sensitivity_l2=1,
                      quantile=q, chosen_k=k)
    return k


def _threshold_for(meas_factory, d_in, delta: float) -> int:
    lo, hi = 1, 2
    while meas_factory(hi).map(d_in)[1] > delta:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if meas_factory(mid).map(d_in)[1] > delta:
            lo = mid
        else:
            hi = mid
    return hi


def select_values(
    counts: Counter, value_type: pa.DataType, k: int, accountant: ZCDPAccountant, rho: float, delta: float, column: str
) -> list:
    """Values whose noisy distinct-unit count passes OpenDP's Gaussian threshold, most frequent first.

    d_in = (L0 = k, L2 = ceil(sqrt k), L_inf = 1), which OpenDP charges as L2 = sqrt(L0) L_inf = sqrt(k); the scale
    spends ``rho`` and the threshold is the smallest that keeps the thresholding's delta within ``delta``."""
    is_int = pa.types.is_integer(value_type)
    key_t = dp.i64 if is_int else str
    space = dp.map_domain(dp.atom_domain(T=key_t), dp.atom_domain(T=dp.i64)), dp.l02inf_distance(
        dp.absolute_distance(T=dp.i64)
    )
    d_in = (int(k), int(math.ceil(math.sqrt(k))), 1)
    scale = gaussian_sigma(rho, math.sqrt(k))  # OpenDP charges by min(L2, sqrt(L0) L_inf) = sqrt(k)

    def make(threshold: int):
        return dp.m.make_gaussian_threshold(*space, scale=scale, threshold=threshold)

    threshold = _threshold_for(make, d_in, delta)
    meas = make(threshold)
    spent_rho, spent_delta = meas.map(d_in)
    data = {(int(v) if is_int else str(v)): int(c) for v, c in counts.items()}
    released = meas(data) if data else {}
    accountant.charge(STAGE, "Gaussian thresholding (partition selection)", float(spent_rho),
                      delta=float(spent_delta), clique=[column], sigma=scale, threshold=threshold,
                      sensitivity=list(d_in))
    return [v for v, _ in sorted(released.items(), key=lambda kv: (-kv[1], str(kv[0])))]


def select_bounds(
    cell_counts: np.ndarray, kind: str, k: int, accountant: ZCDPAccountant, rho: float, column: str
) -> tuple[float, float]:
    """(low, high): the grid edges around the DP 0.01- and 0.99-quantiles (cell i spans (grid[i-1], grid[i]])."""
    grid = grid_for(kind)
    (lo_cell, hi_cell), spent, sigma = noisy_quantiles(cell_counts, float(k), rho, [LOW_Q, HIGH_Q])
    accountant.charge(STAGE, "discrete Gaussian (histogram on a public grid)", spent, clique=[column], sigma=sigma,
                      sensitivity_l2=k, quantiles=[LOW_Q, HIGH_Q])
    lo = float(grid[max(lo_cell - 1, 0)])
    hi = float(grid[hi_cell])
    if hi <= lo:
        hi = float(grid[min(hi_cell + 1, len(grid) - 1)])
    return lo, hi
