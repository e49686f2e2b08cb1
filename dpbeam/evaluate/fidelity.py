"""Fidelity: how closely the synthetic table's distribution follows the real one.

Compares with the real data, so it is NOT differentially private: for the data owner, never part of a release.

- total-variation distance (TVD) of all 1-way and 2-way marginals and of a sample of 3-way ones, on the release's
  domain (its codes) and on bins derived from the real data (deciles of each numeric column's real codes, so that a
  fine public domain does not hide a coarse mismatch);
- the difference of association matrices (Pearson's r between numeric columns, Cramér's V otherwise);
- SDMetrics' QualityReport (column shapes and column-pair trends, each 0-1, and their mean).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from dpbeam.domain import TableDomain
from dpbeam.evaluate.metrics import association_matrix, marginal_tvds, sampled_cliques
from dpbeam.marginals import all_cliques

THREE_WAY_SAMPLE = 100
REAL_BINS = 10


def is_ordered(domain: TableDomain) -> list[bool]:
    """Which columns are numeric (integer, float, datetime bins: codes ordered as the values)."""
    return [c.kind in ("integer", "float", "datetime") for c in domain.columns]


def real_bins(real: np.ndarray, synth: np.ndarray, domain: TableDomain) -> tuple[np.ndarray, np.ndarray, TableDomain]:
    """Both code matrices re-binned at the deciles of the real codes of each numeric column with more than
    ``REAL_BINS`` codes; other columns keep their codes. Returns the new matrices and a domain of matching sizes."""
    r, s = real.astype(np.int64), synth.astype(np.int64)
    cols = []
    for j, (col, ordered) in enumerate(zip(domain.columns, is_ordered(domain))):
        if ordered and col.size > REAL_BINS and len(r):
            edges = np.unique(np.quantile(r[:, j], np.linspace(0, 1, REAL_BINS + 1)[1:-1], method="higher"))
            r[:, j] = np.searchsorted(edges, r[:, j], side="right")
            s[:, j] = np.searchsorted(edges, s[:, j], side="right")
            size = len(edges) + 1
        else:
            size = col.size
        cols.append({"name": col.name, "kind": "integer", "arrow_type": "int64", "nullable": False,
                     "edges": list(range(size + 1))})
    return r, s, TableDomain.from_json(cols)


def _tvd_summary(real: np.ndarray, synth: np.ndarray, domain: TableDomain, three_way: int) -> dict[str, Any]:
    names = domain.names
    one = marginal_tvds(real, synth, domain, all_cliques(names, 1))
    two = marginal_tvds(real, synth, domain, all_cliques(names, 2)) if len(names) > 1 else {}
    three = marginal_tvds(real, synth, domain, sampled_cliques(names, 3, three_way)) if len(names) > 2 else {}
    worst = sorted(two.items(), key=lambda kv: -kv[1])[:5]
    return {
        "mean_1way": float(np.mean(list(one.values()))),
        "mean_2way": float(np.mean(list(two.values()))) if two else None,
        "max_2way": float(max(two.values())) if two else None,
        "mean_3way": float(np.mean(list(three.values()))) if three else None,
        "cliques_3way": len(three),
        "per_column": {c[0]: v for c, v in one.items()},
        "worst_2way": [{"columns": list(c), "tvd": v} for c, v in worst],
    }


def quality_report(real: pa.Table, synth: pa.Table, domain: TableDomain) -> dict[str, Any]:
    """SDMetrics' QualityReport: column shapes (KS or TV complement), column-pair trends (correlation or contingency
    similarity), each 0-1; the score is their mean."""
    import warnings

    with warnings.catch_warnings():  # sdmetrics 0.32 deprecates the single-table report for a multi-table one
        warnings.simplefilter("ignore", FutureWarning)
        from sdmetrics.reports.single_table import QualityReport

    sdtype = {"categorical": "categorical", "boolean": "boolean", "datetime": "datetime"}
    meta = {"columns": {c.name: {"sdtype": sdtype.get(c.kind, "numerical")} for c in domain.columns}}
    report = QualityReport()
    report.generate(real.select(domain.names).to_pandas(), synth.select(domain.names).to_pandas(), meta, verbose=False)
    props = report.get_properties()
    return {"score": float(report.get_score()),
            **{str(p).lower().replace(" ", "_"): float(s) for p, s in zip(props["Property"], props["Score"])}}


def fidelity(
    real_codes: np.ndarray,
    synth_codes: np.ndarray,
    domain: TableDomain,
    real: pa.Table | None = None,
    synth: pa.Table | None = None,
    three_way: int = THREE_WAY_SAMPLE,
) -> dict[str, Any]:
    """Every fidelity figure of the report (see the module doc); ``real``/``synth`` tables enable SDMetrics."""
    rr, rs, rdom = real_bins(real_codes, synth_codes, domain)
    ordered = is_ordered(domain)
    a_real = association_matrix(real_codes, domain, ordered)
    a_synth = association_matrix(synth_codes, domain, ordered)
    iu = np.triu_indices(len(domain.names), 1)
    out: dict[str, Any] = {
        "release_domain": _tvd_summary(real_codes, synth_codes, domain, three_way),
        "real_bins": _tvd_summary(rr, rs, rdom, three_way),
        "association": {
            "columns": domain.names,
            "measure": ["pearson" if ordered[i] and ordered[j] else "cramers_v" for i, j in zip(*iu)],
            "real": a_real.tolist(),
            "synthetic": a_synth.tolist(),
            "mean_abs_difference": float(np.abs(a_real - a_synth)[iu].mean()) if len(iu[0]) else 0.0,
            "max_abs_difference": float(np.abs(a_real - a_synth)[iu].max()) if len(iu[0]) else 0.0,
        },
    }
    if real is not None and synth is not None:
        out["quality"] = quality_report(real, synth, domain)
    return out
