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
