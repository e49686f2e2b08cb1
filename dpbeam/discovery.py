"""DP discovery of what the spec leaves open: categorical values, numeric bins, and the contribution bound k.

Each discovery is two halves. An :class:`~dpbeam.aggregate.Aggregation` computes exact, mergeable statistics on
the engine (next to the data); a DP selection on the driver turns them into public domain facts, charged to the
``discovery`` stage of the budget plan. The statistics never leave the trusted side.

Per-unit sampling. Every statistic about column values is computed on a sample of at most ``m`` rows per unit
(``privacy.discovery_rows_per_unit``, default 1), chosen by the same keyed hash as contribution bounding (run the
aggregation with bound ``m``). A unit then adds at most m values to a histogram and touches at most m distinct values
of a categorical column, so every sensitivity below is m, not k: with k = 178 rows per unit, a 16-value column needs
~178x fewer units to pass the threshold than if each unit counted k times.

- **k** (``max_rows_per_unit: auto``): a histogram of units by their number of rows, over a public geometric grid,
  released with Gaussian noise (a unit is one count in one cell: L2 sensitivity 1); k minimizes the expected error of
  the marginals measured later, rows lost to bounding against noise that grows with k (see :func:`choose_k`).
- **categorical values**: each value's number of distinct units in the sample; values are kept by OpenDP's Gaussian
  thresholding (Rogers 2023): a unit touches at most m values (L0 = m) and adds 1 to each (L_inf = 1). Thresholding
  is approximate zCDP: it spends rho and a part of delta.
- **numeric / datetime bins**: two releases. A coarse histogram on a public grid (log-spaced magnitudes for
  numbers, months for dates; L2 sensitivity m) gives a range; a hierarchical (binary tree) histogram over a fine
  linear grid of that range (L2 sensitivity m sqrt(depth)) answers every quantile at once, and the bins are
  equal-frequency: edges at DP quantiles. Integer columns whose range holds no more integers than bins get one bin
  per value.

Budget rule (:func:`discovery_shares`): every release that decides a domain gets the same share of the discovery
budget: the k histogram one share, each categorical column one share, each numeric column one share for its
quantile tree and half a share for its coarse range (it needs only an order of magnitude).
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
TREE_DEPTH = 10  # fine grids of 2^10 = 1024 leaves
COARSE_WEIGHT, FINE_WEIGHT = 0.5, 1.0


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


@dataclass(frozen=True)
class FineGrid:
    """A public linear grid of ``leaves`` cells of width ``width`` from ``lo`` (a power of two, for the tree).
    Values below or above it land in the first or last cell."""

    lo: float
    width: float
    leaves: int = 1 << TREE_DEPTH

    def cells(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((x - self.lo) / self.width), 0, self.leaves - 1).astype(np.int64)

    def edge(self, i: int) -> float:
        """The lower edge of cell i (i = leaves: the upper edge of the last cell)."""
        return self.lo + i * self.width

    @classmethod
    def over(cls, kind: str, lo: float, hi: float) -> "FineGrid":
        """The fine grid over a discovered range: integers one value per cell when the range fits the leaves."""
        leaves = 1 << TREE_DEPTH
        if kind in ("integer", "datetime") and hi - lo + 1 <= leaves:
            return cls(float(math.floor(lo)), 1.0, leaves)
        return cls(float(lo), max((hi - lo) / leaves, 1e-12 * max(abs(lo), abs(hi), 1.0)), leaves)

    def to_json(self) -> dict[str, float]:
        return {"lo": self.lo, "width": self.width, "leaves": self.leaves}


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
    x = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
    return x[np.isfinite(x)]


def grid_for(kind: str) -> np.ndarray:
    return DATETIME_GRID.astype(np.float64) if kind == "datetime" else NUMBER_GRID


class DiscoveryStats:
    """Exact statistics for a set of discovery tasks over the per-unit sample (run with bound m).

    Without ``fine``: {column: Counter(value -> distinct units)} for categorical tasks and {column: int64 counts per
    coarse grid cell, cell i holding values in (grid[i-1], grid[i]]} for numeric ones. With ``fine`` ({column:
    FineGrid}): {column: int64 counts per fine-grid leaf} for those columns only. The bounding keys are per-column
    hashes of the raw values, so each unit's sampled rows are a function of its own rows and the run key."""

    def __init__(self, tasks: Sequence[DiscoveryTask], fine: dict[str, FineGrid] | None = None):
        self.fine = fine
        self.tasks = [t for t in tasks if fine is None or t.column in fine]
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
            if self.fine is not None:
                grid = self.fine[t.column]
                out[t.column] = np.bincount(grid.cells(_numeric_values(arr, t.kind)), minlength=grid.leaves)
            elif t.kind == "categorical":
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
        if self.fine is not None:
            return {t.column: np.zeros(self.fine[t.column].leaves, np.int64) for t in self.tasks}
        return {t.column: Counter() if t.kind == "categorical" else np.zeros(len(grid_for(t.kind)), np.int64)
                for t in self.tasks}


# ----------------------------------------------------------------------------------------------------------------------
# The budget rule


def discovery_shares(tasks: Sequence[DiscoveryTask], k_auto: bool) -> dict[tuple[str, str], float]:
    """Fractions of the discovery budget per release: ("k", "") for the rows-per-unit histogram, (column, "values")
    for a categorical column, (column, "range") and (column, "bins") for a numeric one. See the module doc."""
    weights: dict[tuple[str, str], float] = {("k", ""): 1.0} if k_auto else {}
    for t in tasks:
        if t.kind == "categorical":
            weights[(t.column, "values")] = 1.0
        else:
            weights[(t.column, "range")] = COARSE_WEIGHT
            weights[(t.column, "bins")] = FINE_WEIGHT
    total = sum(weights.values())
    return {key: w / total for key, w in weights.items()}


# ----------------------------------------------------------------------------------------------------------------------
# DP selections (driver side)


def noisy_quantiles(
    cell_counts: np.ndarray, sensitivity: float, rho: float, qs: Sequence[float]
) -> tuple[list[int], float, float, np.ndarray]:
    """DP quantiles of values summarized by exact counts per public grid cell.

    Protects: the cell counts, of L2 sensitivity ``sensitivity`` (one unit adds at most that many values, in the
    worst case all to one cell). One discrete Gaussian release of scale sigma = sensitivity / sqrt(2 rho), so it
    costs rho (OpenDP's map). Then post-processing only: cells whose noisy count is below a cut-off are zeroed (so the
    many empty cells of a wide grid add no false mass), and for each q the answer is the first cell where the
    cumulative count reaches q times the total. Returns (cell indices, rho spent, sigma, the noisy counts after the
    cut-off).
    The cut-off is sigma sqrt(2 ln(100 cells)): by the Gaussian tail bound the expected number of empty cells whose
    noise passes it is at most 0.01, whatever the size of the grid. When no cell passes (few values spread over many
    cells), the same noisy counts are summed over groups of 2, 4, 8, ... adjacent cells (noise sigma sqrt(width), the
    cut-off scaled alike) until some group passes, and a passing group's mass is spread evenly over its cells: still
    post-processing of the one release.

    A histogram is used rather than the exponential mechanism on -|#below(c) - q n| because on a public grid every
    candidate beyond the data ties on that score, and the mechanism would pick among them uniformly."""
    sigma = gaussian_sigma(rho, sensitivity)
    noisy, spent = add_discrete_gaussian(np.asarray(cell_counts, dtype=np.int64), sigma, sensitivity)
    cut = sigma * math.sqrt(2 * math.log(100 * len(noisy)))
    kept = np.where(noisy >= cut, noisy, 0).astype(np.float64)
    width = 1
    while kept.sum() <= 0 and width < len(noisy):  # nothing stands out: read the same release at a coarser grid
        width *= 2
        groups = np.add.reduceat(noisy.astype(np.float64), np.arange(0, len(noisy), width))
        passed = groups >= sigma * math.sqrt(width) * math.sqrt(2 * math.log(100 * len(groups)))
        kept = np.repeat(np.where(passed, groups, 0.0) / width, width)[: len(noisy)]
    if kept.sum() <= 0:  # nothing stands out at any resolution: fall back to the single largest noisy cell
        kept = np.zeros(len(noisy))
        kept[int(np.argmax(noisy))] = 1.0
    cdf = np.cumsum(kept) / kept.sum()
    cells = [int(min(np.searchsorted(cdf, q - 1e-12, side="left"), len(cdf) - 1)) for q in qs]
    return cells, spent, sigma, kept


def tree_levels(leaf_counts: np.ndarray) -> list[np.ndarray]:
    """The exact counts of every level of the binary tree over the leaves, root first."""
    levels = [np.asarray(leaf_counts, dtype=np.int64)]
    while len(levels[-1]) > 1:
        x = levels[-1]
        levels.append(x[0::2] + x[1::2])
    return levels[::-1]


def tree_quantiles(
    leaf_counts: np.ndarray, sensitivity: float, rho: float, qs: Sequence[float]
) -> tuple[list[int], float, float, bool]:
    """DP quantiles from one release of a hierarchical histogram (Hay et al. 2010; Qardaji et al. 2013).

    Protects: the counts of every node of a binary tree over ``leaf_counts`` (a power-of-two number of cells). One
    unit adds at most ``sensitivity`` = m values, each to one node per level, so the L2 sensitivity of the whole
    release (all D levels below the root) is m sqrt(D); every node gets discrete Gaussian noise of scale
    sigma = m sqrt(D) / sqrt(2 rho), which costs rho. The root is not released.

    Post-processing: a quantile walks down from the root, at each node splitting the remaining mass between the
    children in proportion to their noisy counts (counts below sigma sqrt(2 ln(nodes)) read as 0, so that the noise
    of the many empty nodes of a padded grid adds no false mass: by the Gaussian tail bound fewer than one empty node
    passes in expectation), so each answer sums only D noisy counts
    (error ~ sigma sqrt(D)) instead of up to 2^D for a flat histogram's prefix. Returns (leaf index per q, rho spent,
    sigma, informative): informative is False when no node of the first level stands out of the noise, so that the
    walks split evenly and the answers are equal steps of the grid."""
    levels = tree_levels(leaf_counts)[1:]
    depth = len(levels)
    l2 = float(sensitivity) * math.sqrt(depth)
    sigma = gaussian_sigma(rho, l2)
    flat = np.concatenate(levels)
    noisy_flat, spent = add_discrete_gaussian(flat, sigma, l2)
    cut = sigma * math.sqrt(2 * math.log(len(flat)))
    noisy, start = [], 0
    for lv in levels:
        node_counts = noisy_flat[start:start + len(lv)].astype(np.float64)
        noisy.append(np.where(node_counts >= cut, node_counts, 0.0))
        start += len(lv)
    out = []
    for q in qs:
        node, target, mass = 0, q, 1.0  # target and mass as fractions of the root
        for lv in noisy:
            left, right = lv[2 * node], lv[2 * node + 1]
            share = 0.5 if left + right <= 0 else left / (left + right)
            if target <= mass * share or right <= 0 < left:
                node, mass = 2 * node, mass * share
            else:
                node, target, mass = 2 * node + 1, target - mass * share, mass * (1 - share)
        out.append(node)
    return out, spent, sigma, bool(noisy[0].any())


def choose_k(
    rows_per_unit: np.ndarray,
    q: float,
    accountant: ZCDPAccountant,
    rho: float,
    sigma_per_row: float,
    cells: float,
) -> tuple[int, float]:
    """k for accuracy: the k that minimizes the expected error of a measured marginal (Amin et al. 2019, "Bounding
    User Contributions: A Bias-Variance Trade-off in Differential Privacy"), never above the DP q-quantile of rows per
    unit. Returns (k, expected share of rows kept).

    Protects: the histogram of units by rows per unit on ``K_GRID`` (a unit is one count in one cell: L2 sensitivity
    1); one discrete Gaussian release costs ``rho``. Everything after is post-processing of that noisy histogram h
    (after the cut-off of :func:`noisy_quantiles`, so that noise in the many empty cells of long rows adds no rows):
    rows kept at k, R(k) = sum_c h(c) min(c, k), of N = R(inf), and the error of a marginal of ``cells`` cells whose
    counts get noise of scale k * ``sigma_per_row``:

        err(k) = (N - R(k)) / (2 N)  +  cells * k * sigma_per_row * sqrt(2/pi) / (2 R(k))

    the first term the total-variation distance that dropping rows can cause at most half of (rows lost from heavy
    units shift a marginal by at most half their share when those rows resemble the kept ones in part), the second
    the expected TVD of Gaussian noise. With many units the noise term vanishes and k reaches the q-quantile; with
    few units and many rows each, k stays small."""
    (cell,), spent, sigma, h = noisy_quantiles(rows_per_unit, 1.0, rho, [q])
    k_cap = int(K_GRID[cell])
    # a unit in cell i has between grid[i-1] + 1 and grid[i] rows: read it as the middle of that range
    rows = (np.concatenate([[0], K_GRID[:-1]]) + 1 + K_GRID) / 2.0
    total = float(np.sum(h * rows))
    best, best_err, kept_share = 1, math.inf, 1.0
    if total > 0:
        for k in K_GRID[K_GRID <= k_cap]:
            kept = float(np.sum(h * np.minimum(rows, k)))
            if kept <= 0:
                continue
            err = (total - kept) / (2 * total) + cells * k * sigma_per_row * math.sqrt(2 / math.pi) / (2 * kept)
            if err < best_err:
                best, best_err, kept_share = int(k), err, kept / total
    accountant.charge(STAGE, "discrete Gaussian (histogram of rows per unit)", spent, sigma=sigma, sensitivity_l2=1,
                      quantile_cap=q, chosen_k=best)
    return best, kept_share


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


@dataclass(frozen=True)
class ValueSelection:
    values: list
    threshold: int
    sigma: float


def select_values(
    counts: Counter, value_type: pa.DataType, m: int, accountant: ZCDPAccountant, rho: float, delta: float, column: str
) -> ValueSelection:
    """Values whose noisy distinct-unit count passes OpenDP's Gaussian threshold, most frequent first.

    Protects: the distinct-unit count of each value in the per-unit sample of at most ``m`` rows, so one unit adds 1
    to at most m values: d_in = (L0 = m, L2 = ceil(sqrt m), L_inf = 1), which OpenDP charges as L2 = sqrt(L0) L_inf =
    sqrt(m). The scale spends ``rho``; the threshold is the smallest that keeps the thresholding's delta within
    ``delta`` (approximate zCDP)."""
    is_int = pa.types.is_integer(value_type)
    key_t = dp.i64 if is_int else str
    space = dp.map_domain(dp.atom_domain(T=key_t), dp.atom_domain(T=dp.i64)), dp.l02inf_distance(
        dp.absolute_distance(T=dp.i64)
    )
    d_in = (int(m), int(math.ceil(math.sqrt(m))), 1)
    scale = gaussian_sigma(rho, math.sqrt(m))  # OpenDP charges by min(L2, sqrt(L0) L_inf) = sqrt(m)

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
    values = [v for v, _ in sorted(released.items(), key=lambda kv: (-kv[1], str(kv[0])))]
    return ValueSelection(values, threshold, scale)


def select_range(
    cell_counts: np.ndarray, kind: str, m: int, accountant: ZCDPAccountant, rho: float, column: str
) -> FineGrid:
    """The fine grid to search for bins in: the coarse-grid edges around the DP 0.01- and 0.99-quantiles (cell i
    spans (grid[i-1], grid[i]]), see :func:`noisy_quantiles`; L2 sensitivity ``m`` (the per-unit sample)."""
    grid = grid_for(kind)
    (lo_cell, hi_cell), spent, sigma, _ = noisy_quantiles(cell_counts, float(m), rho, [LOW_Q, HIGH_Q])
    accountant.charge(STAGE, "discrete Gaussian (histogram on a public grid)", spent, clique=[column], sigma=sigma,
                      sensitivity_l2=m, quantiles=[LOW_Q, HIGH_Q])
    lo = float(grid[max(lo_cell - 1, 0)])
    hi = float(grid[hi_cell])
    if hi <= lo:
        hi = float(grid[min(hi_cell + 1, len(grid) - 1)])
    return FineGrid.over(kind, lo, hi)


def select_edges(
    leaf_counts: np.ndarray,
    grid: FineGrid,
    kind: str,
    bins: int,
    m: int,
    accountant: ZCDPAccountant,
    rho: float,
    column: str,
) -> tuple[list, bool]:
    """Equal-frequency bin edges at DP quantiles (see :func:`tree_quantiles`; L2 sensitivity m sqrt(depth)).

    The outer edges are the 0.01- and 0.99-quantiles (values beyond are clamped into the end bins); the inner ones
    the quantiles at equal steps between. Edges that coincide merge, so a point mass is one bin. Integers: edges are
    whole numbers, and a range that holds at most ``bins`` integers gets one bin per value. Datetimes: microseconds
    since the epoch. Returns (edges, informative) (see :func:`tree_quantiles`)."""
    qs = [LOW_Q + (HIGH_Q - LOW_Q) * j / bins for j in range(bins + 1)]
    leaves, spent, sigma, informative = tree_quantiles(leaf_counts, float(m), rho, qs)
    accountant.charge(STAGE, "discrete Gaussian (hierarchical histogram on a public grid)", spent, clique=[column],
                      sigma=sigma, sensitivity_l2=m * math.sqrt(TREE_DEPTH), bins=bins)
    lo, hi = grid.edge(leaves[0]), grid.edge(leaves[-1] + 1)
    inner = [grid.edge(i + 1) for i in leaves[1:-1]]
    if kind in ("integer", "datetime"):
        lo_i, hi_i = math.floor(lo), math.ceil(hi) - (1 if grid.width == 1.0 else 0)
        hi_i = max(hi_i, lo_i)
        if kind == "integer" and hi_i - lo_i + 1 <= bins:
            return list(range(lo_i, hi_i + 2)), informative
        end = hi_i + 1
        return sorted({lo_i, end, *(int(round(e)) for e in inner if lo_i < round(e) < end)}), informative
    edges = sorted({lo, hi, *(e for e in inner if lo < e < hi)})
    if len(edges) < 2:
        edges = [lo, lo + grid.width]
    return edges, informative
