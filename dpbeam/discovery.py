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
  released with Gaussian noise (a unit is one count in one cell: L2 sensitivity 1); k minimizes the expected error of the
  marginals measured later, rows lost to bounding against noise that grows with k (see :func:`choose_k`).
- **categorical values**: each value's number of distinct units in the sample; values are kept by OpenDP's Gaussian
  thresholding (Rogers 2023): a unit touches at most m values (L0 = m) and adds 1 to each (L_inf = 1). Thresholding
  is approximate zCDP: it spends rho and a part of delta.
- **numeric / datetime bins**: two releases. A histogram on a coarse public grid (one cell per decade of magnitude
  for numbers, months for dates; L2 sensitivity m) gives a range and a noisy count of the sampled values; a
  hierarchical (binary tree) histogram over a fine linear grid of that range (:func:`release_tree`: L2 sensitivity
  m sqrt(depth), node masses made consistent top-down) answers every quantile at once, and the bins are
  equal-frequency: edges at DP quantiles. Integer columns whose range holds no more integers than bins get one bin
  per value; a point mass gets a bin of its own. How many bins, unless the spec says: as many as the measurement's
  noise affords (:func:`bins_for_noise`, from public quantities and the DP estimates of rows kept).

Budget rule (:func:`discovery_shares`): every release that decides a domain gets the same share of the discovery
budget: the k histogram one share, each categorical column one share, each numeric column one share for its
quantile tree and half a share for its coarse range (it needs only an order of magnitude).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dpbeam.aggregate import UNIT_H1, UNIT_H2
from dpbeam.domain import roundest
from dpbeam.privacy._opendp import dp
from dpbeam.privacy.accountant import ZCDPAccountant
from dpbeam.privacy.noise import add_discrete_gaussian, gaussian_sigma

STAGE = "discovery"
K_GRID = np.unique(np.round(np.geomspace(1, 100_000, 61)).astype(np.int64))
LOW_Q, HIGH_Q = 0.01, 0.99
# 1e-3 .. 1e12, one step per decade: a coarse grid, so that a few thousand values stand out of the noise (the fine
# tree resolves inside the range it gives)
_MAG = 10.0 ** np.arange(-3, 13, dtype=np.float64)
# 0 is a cell of its own (the cell below it ends just under 0): counts, fees and flags pile up at exactly 0, and a
# range read from a cell (-0.001, 0] reached below columns that are never negative (a fee of -1.3e-05)
BELOW_ZERO = float(np.nextafter(0.0, -1.0))
NUMBER_GRID = np.unique(np.concatenate([-_MAG[::-1], [BELOW_ZERO, 0.0], _MAG]))
DATETIME_GRID = (
    np.arange(np.datetime64("1900-01"), np.datetime64("2101-01")).astype("datetime64[us]").astype(np.int64)
)
TREE_DEPTH = 10  # fine grids of 2^10 = 1024 leaves
MAX_DEPTH = 16  # fine trees of large tables: see tree_depth
INTEGER_DEPTH = 14  # integers: one leaf per value up to 2^14 values (a year in (1000, 10000])
COARSE_WEIGHT, FINE_WEIGHT = 0.5, 1.0
SLACK = 1.0  # end quantiles leave out SLACK sigma / total more than LOW_Q (see TreeRelease.end_slack)


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
    Values below or above it land in the first or last cell. ``point``: the range discovered was one value (``lo``;
    both end quantiles in the coarse cell that holds 0 alone)."""

    lo: float
    width: float
    leaves: int = 1 << TREE_DEPTH
    point: bool = False

    def cells(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((x - self.lo) / self.width), 0, self.leaves - 1).astype(np.int64)

    def edge(self, i: int) -> float:
        """The lower edge of cell i (i = leaves: the upper edge of the last cell)."""
        return self.lo + i * self.width

    @property
    def depth(self) -> int:
        """Levels of the binary tree over the leaves (below its root)."""
        return int(self.leaves).bit_length() - 1

    @classmethod
    def over(cls, kind: str, lo: float, hi: float, depth: int = TREE_DEPTH) -> "FineGrid":
        """The fine grid over a discovered range (public: the range is a DP output). Integers get one value per leaf
        when the range holds at most 2^INTEGER_DEPTH of them, and only as many leaves as the next power of two above
        the range (a shallower tree: its noise grows with the square root of its depth); other ranges get
        2^depth leaves (see :func:`tree_depth`); a range of one value (``hi <= lo``) is a ``point`` grid."""
        leaves = 1 << depth
        span = math.floor(hi) - math.floor(lo) + 1
        if kind == "integer" and span <= 1 << INTEGER_DEPTH:
            return cls(float(math.floor(lo)), 1.0, max(2, 1 << max(0, int(span - 1).bit_length())))
        return cls(float(lo), max((hi - lo) / leaves, 1e-12 * max(abs(lo), abs(hi), 1.0)), leaves, point=hi <= lo)

    def to_json(self) -> dict[str, float]:
        return {"lo": self.lo, "width": self.width, "leaves": self.leaves, **({"point": True} if self.point else {})}


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


def multiresolution_mass(noisy: np.ndarray, sigma: float, family: int = 1) -> np.ndarray:
    """Post-processing of one noisy histogram (noise sigma per cell): the mass that stands out of the noise, read at
    the finest resolution where it does.

    A cell keeps its noisy count when that passes the cut-off sigma sqrt(2 ln(200 cells family)). The cells left
    over are read in groups of 2, 4, 8, ... adjacent cells: a group whose left-over noisy sum (u cells, noise
    sigma sqrt(u)) passes the same cut-off at its scale (times sqrt(u)) gives that sum to its left-over cells, in
    proportion to their positive noisy counts. There are fewer than 2 n groups over all scales, so by the Gaussian
    tail bound the expected number of empty groups that pass is at most 0.01 / ``family``, whatever the size of the
    grid. So the thin tails of a distribution (many cells of a few values each) keep their mass instead of vanishing
    under the cut-off, and the empty cells of a wide grid still add none.

    ``family`` is the number of histograms the job reads this way (one per numeric column discovered), so the whole
    job expects at most 0.01 false groups: one false group far from the data carries about the cut-off's mass and
    can take a range's end quantile with it (a count column of 0s and 1s got a range up to 1e11 in a 55-column job
    before the family was counted)."""
    noisy = np.asarray(noisy, dtype=np.float64)
    n = len(noisy)
    kept = np.zeros(n)
    done = np.zeros(n, dtype=bool)
    cut = sigma * math.sqrt(2 * math.log(200 * max(n, 1) * max(family, 1)))
    width = 1
    while width < 2 * n:
        for start in range(0, n, width):
            cells = np.arange(start, min(start + width, n))
            left = cells[~done[cells]]
            if len(left) == 0:
                continue
            total = float(noisy[left].sum())
            if total >= cut * math.sqrt(len(left)):
                weight = np.maximum(noisy[left], 0.0)
                kept[left] = total * (weight / weight.sum() if weight.sum() > 0 else 1.0 / len(left))
                done[left] = True
        width *= 2
    return kept


def noisy_histogram(
    cell_counts: np.ndarray, sensitivity: float, rho: float, family: int = 1
) -> tuple[np.ndarray, float, float, np.ndarray]:
    """One DP release of counts per public grid cell, read as the mass that stands out of the noise.

    Protects: the cell counts, of L2 sensitivity ``sensitivity`` (one unit adds at most that many values, in the
    worst case all to one cell). One discrete Gaussian release of scale sigma = sensitivity / sqrt(2 rho), so it
    costs rho (OpenDP's map). Then post-processing only (:func:`multiresolution_mass`, its cut-off for ``family``
    histograms read in the job). Returns (mass per cell, rho spent, sigma, the noisy counts); the mass is all 0 when
    nothing stands out at any resolution.

    A histogram is used rather than the exponential mechanism on -|#below(c) - q n| because on a public grid every
    candidate beyond the data ties on that score, and the mechanism would pick among them uniformly."""
    sigma = gaussian_sigma(rho, sensitivity)
    noisy, spent = add_discrete_gaussian(np.asarray(cell_counts, dtype=np.int64), sigma, sensitivity)
    return multiresolution_mass(noisy, sigma, family), spent, sigma, noisy


def mass_quantile(mass: np.ndarray, q: float) -> int:
    """The first cell where the cumulative mass reaches q times its total (the mass must have a positive total)."""
    cdf = np.cumsum(mass) / mass.sum()
    return int(min(np.searchsorted(cdf, q - 1e-12, side="left"), len(cdf) - 1))


def pad_leaves(counts: np.ndarray) -> np.ndarray:
    """Exact counts per cell padded with empty cells to a power-of-two length (at least 2), for a tree."""
    counts = np.asarray(counts, dtype=np.int64)
    size = max(2, 1 << max(0, int(len(counts) - 1).bit_length()))
    return np.concatenate([counts, np.zeros(size - len(counts), np.int64)])


def tree_levels(leaf_counts: np.ndarray) -> list[np.ndarray]:
    """The exact counts of every level of the binary tree over the leaves, root first."""
    levels = [np.asarray(leaf_counts, dtype=np.int64)]
    while len(levels[-1]) > 1:
        x = levels[-1]
        levels.append(x[0::2] + x[1::2])
    return levels[::-1]


@dataclass(frozen=True)
class TreeRelease:
    """The post-processed masses of every node of a released hierarchical histogram (see :func:`release_tree`):
    ``mass[0]`` the root (the noisy total), ``mass[j]`` the 2^j nodes of level j, the last level the leaves."""

    mass: tuple[np.ndarray, ...]
    sigma: float
    spent: float
    informative: bool

    @property
    def total(self) -> float:
        return float(self.mass[0][0]) if self.informative else 0.0

    def end_slack(self) -> float:
        """The share of the total to leave out at each end, beyond LOW_Q: the share that one node's noise sigma
        makes up (capped at 0.1). The walk's false mass in the empty cells at the ends of a grid is about 0.3 sigma
        per level next to the data (see :func:`release_tree`), and a quantile below it would land in that
        emptiness."""
        return min(0.1, SLACK * self.sigma / self.total) if self.total > 0 else 0.0

    def quantile(self, q: float) -> int:
        """The leaf where the cumulative mass reaches q times the total, walking down from the root."""
        node, target = 0, q * float(self.mass[0][0])
        for lv in self.mass[1:]:
            left, right = lv[2 * node], lv[2 * node + 1]
            if (target <= left and left > 0) or right <= 0:
                node = 2 * node
            else:
                node, target = 2 * node + 1, target - left
        return node


def release_tree(leaf_counts: np.ndarray, sensitivity: float, rho: float) -> TreeRelease:
    """One DP release of a hierarchical histogram (Hay et al. 2010; Qardaji et al. 2013), read as node masses.

    Protects: the counts of every node of a binary tree over ``leaf_counts`` (a power-of-two number of cells). One
    unit adds at most ``sensitivity`` = m values, each to one node per level, so the L2 sensitivity of the whole
    release (all D levels below the root) is m sqrt(D); every node gets discrete Gaussian noise of scale
    sigma = m sqrt(D) / sqrt(2 rho), which costs rho. The root is not released.

    Post-processing: the total is the sum of the two noisy nodes of the first level; going down, a node of estimated
    mass M splits between its children of noisy counts L and R as left = clip((M + L - R) / 2, 0, M) (the least
    squares split that keeps the children consistent with their parent; Hay et al.'s top-down step), so the noise of
    an empty child cancels against its sibling instead of being thresholded away with part of the data (a hard
    cut-off of a few sigma dropped the mass of every moderately filled node and sent the walks to the heavy
    sibling). The clip leaves a false mass of about 0.3 sigma per level at the edge of the data: the end quantiles
    stay clear of it (:meth:`TreeRelease.end_slack`). A quantile then sums D splits (error ~ sigma sqrt(D)) instead
    of up to 2^D cells of a flat histogram's prefix. When the noisy total does not stand out of its noise (below
    3 sigma sqrt(2)) the release is not informative and every node splits evenly."""
    levels = tree_levels(leaf_counts)[1:]
    depth = len(levels)
    l2 = float(sensitivity) * math.sqrt(depth)
    sigma = gaussian_sigma(rho, l2)
    flat = np.concatenate(levels)
    noisy_flat, spent = add_discrete_gaussian(flat, sigma, l2)
    noisy, start = [], 0
    for lv in levels:
        noisy.append(noisy_flat[start:start + len(lv)].astype(np.float64))
        start += len(lv)
    return tree_masses(noisy, sigma, spent)


def tree_masses(noisy: Sequence[np.ndarray], sigma: float, spent: float = 0.0) -> TreeRelease:
    """Post-processing of a released tree's noisy levels (below the root, top first): see :func:`release_tree`."""
    total = float(noisy[0].sum())
    informative = total >= 3 * sigma * math.sqrt(2)
    mass = [np.array([total if informative else 1.0])]
    for lv in noisy:
        parent = mass[-1]
        left = np.clip((parent + lv[0::2] - lv[1::2]) / 2, 0.0, parent) if informative else parent / 2
        child = np.empty(2 * len(parent))
        child[0::2], child[1::2] = left, parent - left
        mass.append(child)
    return TreeRelease(tuple(mass), sigma, spent, informative)


def tree_quantiles(
    leaf_counts: np.ndarray, sensitivity: float, rho: float, qs: Sequence[float]
) -> tuple[list[int], float, float, bool]:
    """DP quantiles from one release of a hierarchical histogram: :func:`release_tree` (what it protects, its
    sensitivity m sqrt(D) and rho), then a walk per q (:meth:`TreeRelease.quantile`). Returns (leaf index per q, rho
    spent, sigma, informative): when not informative the answers are equal steps of the grid."""
    tree = release_tree(leaf_counts, sensitivity, rho)
    return [tree.quantile(q) for q in qs], tree.spent, tree.sigma, tree.informative


def choose_k(
    rows_per_unit: np.ndarray,
    q: float,
    accountant: ZCDPAccountant,
    rho: float,
    sigma_per_row: float,
    cells: float,
) -> tuple[int, float | None, float]:
    """k for accuracy: the k that minimizes the expected error of a measured marginal (Amin et al. 2019, "Bounding
    User Contributions: A Bias-Variance Trade-off in Differential Privacy"), never above the DP q-quantile of rows per
    unit. Returns (k, expected share of rows kept (None when unknown), expected rows kept (0 when unknown)).

    Protects: the histogram of units by rows per unit on ``K_GRID`` (a unit is one count in one cell: L2 sensitivity
    1); one discrete Gaussian release costs ``rho`` (:func:`noisy_histogram`). Everything after is post-processing
    of the mass h that stands out of its noise (so that noise in the many empty cells of long rows adds no rows):
    rows kept at k, R(k) = sum_c h(c) min(c, k), of N = R(inf), and the error of a marginal of ``cells`` cells whose
    counts get noise of scale k * ``sigma_per_row``:

        err(k) = (N - R(k)) / (2 N)  +  cells * k * sigma_per_row * sqrt(2/pi) / (2 R(k))

    the first term the total-variation distance that dropping rows can cause at most half of (rows lost from heavy
    units shift a marginal by at most half their share when those rows resemble the kept ones in part), the second
    the expected TVD of Gaussian noise. With many units the noise term vanishes and k reaches the q-quantile; with
    few units and many rows each, k stays small. When the release does not stand out of its noise, k = 1 (the
    bound that loses least when nothing is known). Also returns R(k), the estimate of rows kept (for
    :func:`bins_for_noise`)."""
    h, spent, sigma, _ = noisy_histogram(rows_per_unit, 1.0, rho)
    k_cap = int(K_GRID[mass_quantile(h, q)]) if h.sum() > 0 else 1
    # a unit in cell i has between grid[i-1] + 1 and grid[i] rows: read it as the middle of that range
    rows = (np.concatenate([[0], K_GRID[:-1]]) + 1 + K_GRID) / 2.0
    total = float(np.sum(h * rows))
    best, best_err, kept_share, kept_rows = 1, math.inf, None, 0.0
    if total > 0:
        for k in K_GRID[K_GRID <= k_cap]:
            kept = float(np.sum(h * np.minimum(rows, k)))
            if kept <= 0:
                continue
            err = (total - kept) / (2 * total) + cells * k * sigma_per_row * math.sqrt(2 / math.pi) / (2 * kept)
            if err < best_err:
                best, best_err, kept_share, kept_rows = int(k), err, kept / total, kept
    accountant.charge(STAGE, "discrete Gaussian (histogram of rows per unit)", spent, sigma=sigma, sensitivity_l2=1,
                      quantile_cap=q, chosen_k=best)
    return best, kept_share, kept_rows


NOISE_TVD = 1.0  # the expected total-variation distance that noise may add to a measured 2-way marginal of open bins


def bins_for_noise(rows: float, k: int, sigma_per_row: float, most: int) -> int:
    """How many bins an open numeric column can afford, from public quantities and DP estimates (post-processing):
    ``rows``, an estimate of the rows kept after bounding (a DP output), and the noise k * ``sigma_per_row`` that each
    cell of a measured 2-way marginal will get. A marginal of b x b cells then has expected noise TVD
    b^2 k sigma sqrt(2/pi) / (2 rows); b is the largest number of bins that keeps it at most NOISE_TVD, between 2
    and ``most`` (the spec's or the default number). Fewer, wider bins when the noise per cell is high: a bin whose
    count drowns in noise carries nothing the synthesizer can use."""
    if rows <= 0 or sigma_per_row <= 0:
        return 2
    cells = NOISE_TVD * 2 * rows / (k * sigma_per_row * math.sqrt(2 / math.pi))
    return int(min(most, max(2, math.floor(math.sqrt(cells)))))


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


def tree_depth(total: float, m: int, rho_tree: float) -> int:
    """How deep a fine tree to build over a decade-wide range, from public quantities and a DP count (post-processing
    of the range release): TREE_DEPTH, plus one level for each doubling of total / sigma_1 beyond 16, up to
    MAX_DEPTH. sigma_1 = m / sqrt(2 rho_tree) is the noise of a one-level tree's nodes, so total / sigma_1 is how
    many parts the values can be told apart in; a large table can afford leaves narrow enough for values packed in
    a sliver of their decade (a city's latitudes in (10, 100]), at sqrt(depth) more noise per node."""
    if total <= 0:
        return TREE_DEPTH
    parts = total / gaussian_sigma(rho_tree, float(m))
    return int(min(MAX_DEPTH, max(TREE_DEPTH, TREE_DEPTH + math.ceil(math.log2(max(parts, 1.0) / 16)))))


def select_range(
    cell_counts: np.ndarray, kind: str, m: int, accountant: ZCDPAccountant, rho: float, column: str,
    rho_tree: float | None = None, family: int = 1,
) -> tuple[FineGrid, float]:
    """The fine grid to search for bins in: the coarse-grid edges around the DP 0.01- and 0.99-quantiles (cell i
    spans (grid[i-1], grid[i]]) of one :func:`noisy_histogram` on the coarse grid: L2 sensitivity ``m`` (m values
    per unit), rho ``rho``, read with the cut-off for ``family`` such histograms in the job (one per numeric column
    discovered). Returns the fine grid (:meth:`FineGrid.over`; its depth from :func:`tree_depth` and the
    fine tree's budget ``rho_tree``, TREE_DEPTH when not given) and the noisy total (post-processing), an
    estimate of the number of sampled values (0 when nothing stood out of the noise; the range is then the single
    largest noisy cell)."""
    grid = grid_for(kind)
    mass, spent, sigma, noisy = noisy_histogram(cell_counts, float(m), rho, family)
    accountant.charge(STAGE, "discrete Gaussian (histogram on a public grid)", spent, clique=[column], sigma=sigma,
                      sensitivity_l2=m, quantiles=[LOW_Q, HIGH_Q])
    total = float(mass.sum())
    if total > 0:
        lo_cell, hi_cell = mass_quantile(mass, LOW_Q), mass_quantile(mass, HIGH_Q)
    else:  # nothing stands out: the cell with the largest noisy count
        lo_cell = hi_cell = int(np.argmax(noisy))
    lo = float(grid[max(lo_cell - 1, 0)])
    if kind == "integer" and lo_cell > 0:  # cell i holds the integers above grid[i - 1]
        lo = float(math.floor(lo) + 1)
    elif lo == BELOW_ZERO:  # the low quantile is in the cell that holds 0 alone
        lo = 0.0
    hi = float(grid[hi_cell])
    if hi <= lo and not hi == lo == 0.0:  # both quantiles at 0: the range is the point 0
        hi = float(grid[min(hi_cell + 1, len(grid) - 1)])
    depth = TREE_DEPTH if rho_tree is None else tree_depth(total, m, rho_tree)
    return FineGrid.over(kind, lo, hi, depth), total


class BinEdges(NamedTuple):
    """Discovered bins: their edges, whether the release stood out of its noise, the codes of float bins that
    hold a point mass (decoded to one value: :attr:`dpbeam.domain.BinnedDomain.points`), and ``ends``: the share of
    the noisy count left out at each end (LOW_Q plus :meth:`TreeRelease.end_slack`; values beyond the outer edges
    are clamped into the end bins)."""

    edges: list
    informative: bool
    points: tuple[int, ...] = ()
    ends: float = LOW_Q


def _resolution(x: float) -> float:
    """The power of ten that ``x`` is a multiple of (the step of its last significant digit); 1e-18 for none."""
    if x == 0:
        return math.inf
    for e in range(math.floor(math.log10(abs(x))), -19, -1):
        q = x / 10.0**e
        if abs(q - round(q)) < 1e-9 * abs(q):
            return 10.0**e
    return 1e-18


def _snap(grid: FineGrid, i: int, heavy: set[int]) -> float:
    """The edge for a quantile that fell in leaf ``i``: the leaf's roundest number (:func:`domain.roundest`), or,
    when that has digits finer than a leaf's width (the leaf holds no number as round as the grid resolves), the
    roundest number of the leaf and its two neighbours (not reaching into a heavy leaf, which is a bin of its own).
    The noisy walk knows a quantile to about a leaf, so moving it by at most one leaf costs no precision, and values
    recorded to whole units (minutes of delay, dollars) then fall on one side of every edge. Public: the grid and
    the leaf the noisy walk answered."""
    own = roundest(grid.edge(i), grid.edge(i + 1), closed=True)
    if _resolution(own) >= grid.width:
        return own
    lo = grid.edge(i - 1) if i > 0 and i - 1 not in heavy else grid.edge(i)
    hi = grid.edge(i + 2) if i + 1 < grid.leaves and i + 1 not in heavy else grid.edge(i + 1)
    wide = roundest(lo, hi, closed=True)
    return wide if _resolution(wide) > _resolution(own) else own


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
    """Equal-frequency bin edges at DP quantiles: one :func:`release_tree` (L2 sensitivity m sqrt(depth), rho
    ``rho``), then post-processing only.

    The outer edges are the q- and (1 - q)-quantiles, q = 0.01 plus the share of the noisy total that one node's
    noise sigma makes up (capped at 0.1): the walk's false mass in the empty cells at the ends of the grid is a few
    tenths of sigma per level, and a lower q would put the end bins in that emptiness. Values beyond are clamped into
    the end bins. The inner edges are the quantiles at equal steps between. Edges that coincide merge; a leaf that
    answers a quantile and holds at least one bin's share of the mass (a point mass, such as 40 hours a week) gets
    an edge on both sides, so it is a bin of its own. Integers: edges are whole numbers, and a range that holds at
    most ``bins`` integers gets one bin per value (so an integer point mass is exact). Datetimes: microseconds since
    the epoch. A float range of one value (:attr:`FineGrid.point`) is one point bin. Returns :class:`BinEdges`:
    (edges, informative (see :func:`release_tree`), point bins: float bins that are exactly one heavy leaf, decoded
    to one value, and the share left out at each end)."""
    tree = release_tree(leaf_counts, float(m), rho)
    accountant.charge(STAGE, "discrete Gaussian (hierarchical histogram on a public grid)", tree.spent,
                      clique=[column], sigma=tree.sigma, sensitivity_l2=m * math.sqrt(grid.depth), bins=bins)
    if kind == "float" and grid.point:  # the range is one value: one point bin, whatever the walks would answer
        return BinEdges([grid.lo, grid.edge(1)], tree.informative, (0,), LOW_Q)
    total = tree.total
    q_lo = LOW_Q + tree.end_slack()
    qs = [q_lo + (1 - 2 * q_lo) * j / bins for j in range(bins + 1)]
    leaves = [tree.quantile(q) for q in qs]
    leaf_mass = tree.mass[-1]
    point_leaves = {i for i in leaves if total > 0 and leaf_mass[i] >= total / bins}  # a bin's share in one leaf
    heavy = [i for i in leaves[1:-1] if i in point_leaves]
    lo, hi = grid.edge(leaves[0]), grid.edge(leaves[-1] + 1)

    def upper(i: int) -> float:
        # float: a quantile known to one leaf may sit anywhere in it: put the edge on the leaf's roundest number, so
        # that values recorded to whole units (minutes of delay, dollars) fall on one side of it, as in the data
        return grid.edge(i + 1) if kind != "float" or i in point_leaves else _snap(grid, i, set(heavy))

    inner = [upper(i) for i in leaves[1:-1]] + [grid.edge(i) for i in heavy]
    if kind in ("integer", "datetime"):
        lo_i, hi_i = math.floor(lo), math.ceil(hi) - (1 if grid.width == 1.0 else 0)
        hi_i = max(hi_i, lo_i)
        if kind == "integer" and hi_i - lo_i + 1 <= bins:
            return BinEdges(list(range(lo_i, hi_i + 2)), tree.informative, (), q_lo)
        end = hi_i + 1
        return BinEdges(sorted({lo_i, end, *(int(round(e)) for e in inner if lo_i < round(e) < end)}),
                        tree.informative, (), q_lo)
    edges = sorted({lo, hi, *(e for e in inner if lo < e < hi)})
    if len(edges) < 2:
        edges = [lo, lo + grid.width]
    # a bin that is exactly one heavy leaf (a quantile's answer holding a bin's share) is a point mass
    points = tuple(j for j in range(len(edges) - 1)
                   if any(edges[j] == grid.edge(i) and edges[j + 1] == grid.edge(i + 1) for i in point_leaves))
    return BinEdges(edges, tree.informative, points, q_lo)
