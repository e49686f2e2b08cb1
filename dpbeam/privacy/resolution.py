"""The resolution of a measurement: measure a 2-way marginal on groups of codes when its cells would drown in noise.

A Gaussian measurement of a marginal with ``c`` cells at noise scale sigma adds an expected L1 error of
``sqrt(2/pi) sigma c``. When a table has few privacy units (or k is large) that error can pass the table's whole
mass, and the measured pair teaches the model nothing but noise: on a user-level panel of 4,711 units a 16 x 16
pair at MST's measurement scale carries an expected noise TVD near 1. Measuring the same pair on groups of codes
(adjacent bins of a numeric column, a categorical column's most common values with the rest as one group) keeps the
noise per cell and shrinks the number of cells, so the correlation between the columns is measured at the
resolution the budget affords; the model keeps the full domain (Private-PGM fits ``Q mu`` to the coarse values,
:class:`dpbeam.synth.mirror.Measured`) and its 1-way marginals still come from the fine 1-way measurements.

Privacy. Grouping is a public, deterministic sum of cells of the exact marginal, applied before the noise: one unit
(at most k rows) still moves the grouped cube by at most k in L1 and in L2 (all its rows in one cell is still the
worst case; summing cells cannot spread a row over two), so a grouped measurement at scale sigma costs
``rho = k^2 / (2 sigma^2)``, the same as the full one. The groups are chosen from public sizes and kinds, the noise
scale and earlier DP outputs only (the noisy 1-way counts and the noisy total), so choosing them is post-processing
and costs nothing.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from dpbeam.domain import TableDomain
from dpbeam.measurements import NoisyMarginal

# The largest expected noise TVD of a measured 2-way marginal, 0.5 sqrt(2/pi) sigma cells / N: above it the pair is
# measured on groups with at most the cells this allows (never fewer than 2 x 2). Chosen on nlswork, baseball and Adult
# at eps = 1 (benchmarks/RESULTS.md, issue 8, fourth pass).
MAX_NOISE_TVD = 0.1
ORDINAL_KINDS = ("integer", "float", "datetime")


def allowed_cells(sigma: float, total: float, max_noise_tvd: float = MAX_NOISE_TVD) -> int:
    """The most cells a marginal measured at noise scale ``sigma`` may have for its expected noise TVD against a
    table of ``total`` rows to stay within ``max_noise_tvd`` (public quantities and a noisy total)."""
    return max(4, int(max_noise_tvd * max(total, 1.0) / (0.5 * math.sqrt(2 / math.pi) * max(sigma, 1e-12))))


def group_counts(size_a: int, size_b: int, cells: int) -> tuple[int, int]:
    """Numbers of groups (g_a, g_b), g <= size, g_a g_b <= ``cells`` where possible (never below 2 per column of
    2 codes or more): the larger count is lowered first, so the groups stay balanced."""
    ga, gb = size_a, size_b
    while ga * gb > cells and (ga > 2 or gb > 2):
        if ga >= gb and ga > 2:
            ga -= 1
        else:
            gb -= 1
    return ga, gb


def value_codes(domain: TableDomain, name: str, compression: Mapping[str, np.ndarray]) -> tuple[list[int], list[int]]:
    """(model codes of the column's values in their public order, model codes that are not an ordered value: the
    null code, a categorical's other code, MST's merged code of rare values)."""
    col = domain[name]
    mapping = compression.get(name)
    size = col.size if mapping is None else int(mapping.max()) + 1
    special = set()
    if col.null_code is not None:
        special.add(col.null_code if mapping is None else int(mapping[col.null_code]))
    if getattr(col, "other_code", None) is not None and col.kind == "categorical":
        special.add(col.other_code if mapping is None else int(mapping[col.other_code]))
    if mapping is not None:
        special.add(int(mapping.max()))  # the merged code (compress_rare puts it last)
    ordered = [c for c in range(size) if c not in special]
    return ordered, sorted(special)


def column_groups(noisy: np.ndarray, groups: int, ordered: Sequence[int], special: Sequence[int],
                  ordinal: bool) -> np.ndarray:
    """A map model code -> group code with at most ``groups`` groups, from the column's noisy 1-way counts
    (post-processing).

    Ordinal columns (integer, float, datetime bins) get contiguous groups of the ordered codes holding about equal
    noisy mass, and the special codes (null, merged) one group of their own. Other columns keep their
    ``groups - 1`` largest codes (by noisy count) as groups of one and put the rest in one group."""
    size = len(noisy)
    out = np.zeros(size, dtype=np.int64)
    mass = np.clip(np.asarray(noisy, dtype=np.float64), 0.0, None) + 1e-9
    if groups >= size:
        return np.arange(size, dtype=np.int64)
    if ordinal and ordered:
        g = max(1, groups - (1 if special else 0))
        m = mass[list(ordered)]
        cum = np.cumsum(m) / m.sum()
        # code j goes to the group of the quantile its mass reaches; ceil keeps every group non-empty from the left
        group = np.minimum((cum * g - 1e-9).astype(np.int64), g - 1)  # cum rises, so groups are runs
        _, group = np.unique(group, return_inverse=True)  # renumber: no empty group in between
        out[list(ordered)] = group
        if special:
            out[list(special)] = int(group.max()) + 1
        return out
    order = np.argsort(-mass, kind="stable")
    out[order[: groups - 1]] = np.arange(groups - 1)
    out[order[groups - 1:]] = groups - 1
    return out


def coarse_cube(cube: np.ndarray, groups: Sequence[np.ndarray]) -> np.ndarray:
    """The cube's cells summed within groups, axis by axis (exact, integer in, integer out): MST's
    :func:`~dpbeam.privacy.mst.compress_cube` with the i-th axis mapped by ``groups[i]``."""
    from dpbeam.privacy.mst import compress_cube

    axes = tuple(str(i) for i in range(len(groups)))
    return compress_cube(np.asarray(cube), axes, dict(zip(axes, groups)))


def one_way_counts(measurements: Sequence[NoisyMarginal]) -> dict[str, np.ndarray]:
    """The noisy 1-way counts in the model domain, from a column's first fine 1-way measurement (``values /
    weights``): post-processing."""
    out: dict[str, np.ndarray] = {}
    for m in measurements:
        if len(m.clique) == 1 and m.groups is None and m.clique[0] not in out:
            y = np.asarray(m.values, dtype=np.float64)
            out[m.clique[0]] = y if m.weights is None else y / m.weights
    return out


def pair_groups(
    pair: tuple[str, str], domain: TableDomain, compression: Mapping[str, np.ndarray],
    one_way: Mapping[str, np.ndarray], sigma: float, total: float, max_noise_tvd: float | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The groups to measure ``pair`` on at noise scale ``sigma`` (None: measure it whole). Reads public sizes and
    kinds, the noise scale and earlier DP outputs (noisy 1-way counts, a noisy total) only."""
    a, b = pair
    sa, sb = len(one_way[a]), len(one_way[b])
    cells = allowed_cells(sigma, total, MAX_NOISE_TVD if max_noise_tvd is None else max_noise_tvd)
    if sa * sb <= cells:
        return None
    ga, gb = group_counts(sa, sb, cells)
    out = []
    for n, g in ((a, ga), (b, gb)):
        ordered, special = value_codes(domain, n, compression)
        out.append(column_groups(one_way[n], g, ordered, special, domain[n].kind in ORDINAL_KINDS))
    return out[0], out[1]
