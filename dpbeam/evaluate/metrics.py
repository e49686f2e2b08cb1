"""Utility metrics: how close a synthetic table's marginals are to the real table's.

These compare against the real data, so their results are not DP: they are for benchmarks and for the data owner,
never part of a release.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from dpbeam.domain import TableDomain
from dpbeam.encode import encode_batch
from dpbeam.marginals import Clique, all_cliques, count_cliques


def _codes(table: pa.Table | np.ndarray, domain: TableDomain) -> np.ndarray:
    return table if isinstance(table, np.ndarray) else encode_batch(table.select(domain.names), domain)


def marginal_tvds(
    real: pa.Table | np.ndarray, synth: pa.Table | np.ndarray, domain: TableDomain, cliques: list[Clique]
) -> dict[Clique, float]:
    """Total-variation distance, 1/2 ||p - q||_1, between the normalized marginals of each clique."""
    a = count_cliques(_codes(real, domain), domain, cliques)
    b = count_cliques(_codes(synth, domain), domain, cliques)
    return {c: 0.5 * float(np.abs(a[c] / max(a[c].sum(), 1) - b[c] / max(b[c].sum(), 1)).sum()) for c in cliques}


def mean_tvd(
    real: pa.Table | np.ndarray, synth: pa.Table | np.ndarray, domain: TableDomain, orders: tuple[int, ...] = (2, 3)
) -> dict[int, float]:
    """Mean TVD over all cliques of each order (Adult: 91 two-way and 364 three-way marginals)."""
    real_c, synth_c = _codes(real, domain), _codes(synth, domain)
    return {
        k: float(np.mean(list(marginal_tvds(real_c, synth_c, domain, all_cliques(domain.names, k)).values())))
        for k in orders
    }


def sampled_cliques(names: list[str], order: int, limit: int, seed: int = 0) -> list[Clique]:
    """Every clique of ``order`` columns, or ``limit`` of them drawn without replacement (fixed seed)."""
    cliques = all_cliques(names, order)
    if len(cliques) <= limit:
        return cliques
    pick = np.random.default_rng(seed).choice(len(cliques), size=limit, replace=False)
    return [cliques[i] for i in sorted(pick)]


def cramers_v(cube: np.ndarray) -> float:
    """Cramér's V of a 2-way count table (0: independent, 1: each value determines the other); rows and columns
    with no count are dropped first."""
    t = cube[cube.sum(axis=1) > 0][:, cube.sum(axis=0) > 0].astype(np.float64)
    n = t.sum()
    if n == 0 or min(t.shape) < 2:
        return 0.0
    expected = np.outer(t.sum(axis=1), t.sum(axis=0)) / n
    chi2 = float(((t - expected) ** 2 / expected).sum())
    return float(np.sqrt(chi2 / (n * (min(t.shape) - 1))))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's correlation, 0 when either side is constant."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    sx, sy = x.std(), y.std()
    if sx == 0 or sy == 0:
        return 0.0
    return float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy))


def association_matrix(codes: np.ndarray, domain: TableDomain, ordered: list[bool]) -> np.ndarray:
    """Pairwise association of the columns of a code matrix: Pearson's r between two ordered (numeric) columns (on
    their bin codes, which are ordered as the values), Cramér's V otherwise. The diagonal is 1."""
    d = len(domain.names)
    out = np.eye(d)
    cubes = count_cliques(codes, domain, all_cliques(domain.names, 2))
    for i in range(d):
        for j in range(i + 1, d):
            if ordered[i] and ordered[j]:
                v = pearson(codes[:, i], codes[:, j])
            else:
                v = cramers_v(cubes[(domain.names[i], domain.names[j])])
            out[i, j] = out[j, i] = v
    return out
