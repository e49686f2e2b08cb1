"""Fairness: fidelity and utility per subgroup of the columns the user marks (e.g. sex, race), and the gap between
the best and the worst group.

Compares with the real data, so it is NOT differentially private: for the data owner, never part of a release.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dpbeam.domain import TableDomain
from dpbeam.errors import SpecError
from dpbeam.evaluate.metrics import marginal_tvds
from dpbeam.evaluate.utility import UtilityResult, scores
from dpbeam.marginals import all_cliques

MIN_GROUP_ROWS = 30  # a subgroup with fewer real test rows gets no figures (too noisy to compare)


def _gap(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return float(max(v) - min(v)) if len(v) >= 2 else None


def fairness(
    real: np.ndarray,
    test_real: np.ndarray,
    synth: np.ndarray,
    domain: TableDomain,
    groups: list[str],
    util: UtilityResult | None = None,
) -> dict[str, Any]:
    """For each column in ``groups`` and each of its codes: its share of the real and synthetic rows, the mean 1-way
    and 2-way TVD of the other columns within the group, and the TSTR/TRTR scores on the group's real test rows.
    ``gap`` is best minus worst over groups with at least ``MIN_GROUP_ROWS`` rows."""
    out: dict[str, Any] = {}
    for g in groups:
        if g not in domain.names:
            raise SpecError(f"fairness column {g!r} is not a released column ({domain.names}); fix --groups")
        j = domain.index(g)
        labels = domain[g].labels()
        rest = [n for n in domain.names if n != g]
        rows = []
        for code in range(domain[g].size):
            r, s = real[real[:, j] == code], synth[synth[:, j] == code]
            t = test_real[:, j] == code
            entry: dict[str, Any] = {"value": labels[code], "real_share": float(len(r) / max(len(real), 1)),
                                     "synthetic_share": float(len(s) / max(len(synth), 1))}
            if len(r) < MIN_GROUP_ROWS or t.sum() < MIN_GROUP_ROWS:
                if len(r) or len(s):
                    entry["note"] = f"fewer than {MIN_GROUP_ROWS} real rows: not compared"
                    rows.append(entry)
                continue
            entry["tvd_1way"] = float(np.mean(list(marginal_tvds(r, s, domain, [(n,) for n in rest]).values())))
            two = all_cliques(rest, 2)
            entry["tvd_2way"] = float(np.mean(list(marginal_tvds(r, s, domain, two).values()))) if two else None
            if util is not None:
                entry["models"] = {
                    m: {on: scores(util.summary["task"], util.y_test[t], p[t]) for on, p in by.items()}
                    for m, by in util.predictions.items()
                }
            rows.append(entry)
        compared = [e for e in rows if "tvd_1way" in e]
        gap: dict[str, Any] = {
            "tvd_1way": _gap([e["tvd_1way"] for e in compared]),
            "tvd_2way": _gap([e["tvd_2way"] for e in compared]),
        }
        if util is not None and compared:
            for m in util.predictions:
                for on in ("synthetic", "real"):
                    for metric in compared[0]["models"][m][on]:
                        gap[f"{m} ({on}) {metric}"] = _gap([e["models"][m][on].get(metric) for e in compared])
        out[g] = {"groups": rows, "gap": gap}
    return out
