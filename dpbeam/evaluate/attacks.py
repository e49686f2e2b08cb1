"""Empirical privacy: what an attacker holding the synthetic table can tell about the training rows.

Compares with the real data, so it is NOT differentially private: for the data owner, never part of a release. DP
bounds all of these attacks whatever they are; these measure how far a particular attack gets.

- exact matches and distance to the closest record (DCR): synthetic -> training rows vs synthetic -> holdout rows,
  with samples of equal size (a release that copies training rows is closer to them than to the holdout);
- membership inference (MIA): given a real row, was it in the training table? Two attacks, scored by ROC AUC on
  equal numbers of members (training rows) and non-members (holdout rows): a density-ratio attack (a classifier
  separating synthetic rows from a reference half of the holdout estimates p_synth / p_reference) and the distance
  to the closest synthetic record;
- canaries: units with unique, rare combinations of values planted in the training table before measurement, and
  how often their combination reappears in the synthetic table, against control combinations never planted.

Distances: 0/1 per categorical column, |code difference| / (codes - 1) per numeric column, summed over columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from dpbeam.bounding import mix64
from dpbeam.domain import TableDomain
from dpbeam.evaluate.fidelity import is_ordered

DCR_SAMPLE = 2000  # synthetic rows whose closest records are searched
REFERENCE_MAX = 5000  # training / holdout rows they are searched among
MIA_MAX = 5000  # members and non-members each
ATTACK_TRAIN_MAX = 20_000  # synthetic rows the density-ratio attacker trains on


def row_hash(codes: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row of a code matrix (equal rows, equal hashes; collisions about n^2 / 2^65)."""
    h = np.zeros(len(codes), dtype=np.uint64)
    for j in range(codes.shape[1]):
        salt = np.uint64(((j + 1) * 0x9E3779B97F4A7C15) % (1 << 64))
        h = mix64(h ^ (codes[:, j].astype(np.uint64) + salt))
    return h


def _weights(domain: TableDomain) -> tuple[np.ndarray, np.ndarray]:
    ordered = np.array(is_ordered(domain))
    scale = np.array([1.0 / max(s - 1, 1) for s in domain.sizes])
    return ordered, scale


def closest_distances(a: np.ndarray, b: np.ndarray, domain: TableDomain, chunk: int = 256) -> np.ndarray:
    """For each row of ``a``, the distance to its closest row of ``b`` (see the module doc)."""
    ordered, scale = _weights(domain)
    a, b = a.astype(np.float32), b.astype(np.float32)
    out = np.empty(len(a))
    for i in range(0, len(a), chunk):
        diff = np.abs(a[i : i + chunk, None, :] - b[None, :, :])
        diff = np.where(ordered, diff * scale.astype(np.float32), diff > 0)
        out[i : i + chunk] = diff.sum(axis=2).min(axis=1)
    return out


def _sample(codes: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return codes if len(codes) <= n else codes[rng.choice(len(codes), n, replace=False)]


def closeness(train: np.ndarray, holdout: np.ndarray, synth: np.ndarray, domain: TableDomain, seed: int = 0) -> dict[str, Any]:
    """Exact-match rate and DCR, synthetic -> training vs synthetic -> holdout, on samples of equal size."""
    rng = np.random.default_rng(seed)
    n = min(len(train), len(holdout), REFERENCE_MAX)
    tr, ho = _sample(train, n, rng), _sample(holdout, n, rng)
    hs = row_hash(synth)
    syn = _sample(synth, DCR_SAMPLE, rng)
    d_tr, d_ho = closest_distances(syn, tr, domain), closest_distances(syn, ho, domain)
    return {
        "reference_rows": int(n),
        "exact_match_rate_train": float(np.isin(hs, row_hash(tr)).mean()),
        "exact_match_rate_holdout": float(np.isin(hs, row_hash(ho)).mean()),
        "dcr_median_train": float(np.median(d_tr)),
        "dcr_median_holdout": float(np.median(d_ho)),
        "share_closer_to_train": float(np.mean(d_tr < d_ho) + 0.5 * np.mean(d_tr == d_ho)),
        "synthetic_rows_sampled": int(len(syn)),
    }


def _roc(members: np.ndarray, nonmembers: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    s = np.r_[members, nonmembers]
    fpr, tpr, _ = roc_curve(y, s)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 400)).astype(int))

    def tpr_at(x: float) -> float:
        return float(tpr[fpr <= x].max()) if (fpr <= x).any() else 0.0

    return {"auc": float(roc_auc_score(y, s)), "tpr_at_fpr_0.01": tpr_at(0.01), "tpr_at_fpr_0.001": tpr_at(0.001),
            "fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}


def membership_inference(
    train: np.ndarray, holdout: np.ndarray, synth: np.ndarray, domain: TableDomain, seed: int = 0
) -> dict[str, Any]:
    """Both attacks of the module doc; members and non-members are disjoint from the attacker's reference rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from dpbeam.evaluate.utility import few_threads

    rng = np.random.default_rng(seed)
    holdout = holdout[rng.permutation(len(holdout))]
    half = len(holdout) // 2
    reference, non = holdout[:half], holdout[half:]
    m = min(len(train), len(non), MIA_MAX)
    members, non = _sample(train, m, rng), _sample(non, m, rng)
    syn = _sample(synth, ATTACK_TRAIN_MAX, rng)
    categorical = np.array([c.kind in ("categorical", "boolean") and c.size <= 255 for c in domain.columns])
    clf = HistGradientBoostingClassifier(max_iter=100, categorical_features=categorical if categorical.any() else None,
                                         random_state=0)
    with few_threads():
        clf.fit(np.r_[syn, reference].astype(np.int64), np.r_[np.ones(len(syn)), np.zeros(len(reference))])
        p = clf.predict_proba(np.r_[members, non].astype(np.int64))[:, 1]
    ratio = np.log(np.clip(p, 1e-9, 1)) - np.log(np.clip(1 - p, 1e-9, 1))
    dcr_syn = _sample(synth, REFERENCE_MAX, rng)
    dist = -closest_distances(np.r_[members, non], dcr_syn, domain)
    return {
        "members": int(m), "non_members": int(m), "reference_rows": int(len(reference)),
        "density_ratio": _roc(ratio[:m], ratio[m:]),
        "closest_record": _roc(dist[:m], dist[m:]),
    }


def make_canaries(real: pa.Table, columns: list[str], n: int, seed: int = 0) -> pa.Table:
    """``n`` rows whose values each come from a random real row, column by column, so that their combinations are
    rare; any combination that occurs in ``real`` is drawn again (trusted side)."""
    rng = np.random.default_rng(seed)
    frame = real.select(columns).to_pandas()
    seen = set(map(tuple, frame.itertuples(index=False, name=None)))
    rows: list[tuple] = []
    while len(rows) < n:
        picks = rng.integers(0, len(frame), size=len(columns))
        row = tuple(frame.iloc[int(i), j] for j, i in enumerate(picks))
        if row not in seen:
            seen.add(row)
            rows.append(row)
    return pa.table({c: [r[j] for r in rows] for j, c in enumerate(columns)}).cast(real.select(columns).schema)


def canary_reappearance(planted: np.ndarray, control: np.ndarray, synth: np.ndarray) -> dict[str, Any]:
    """How many planted canaries' full combinations occur in the synthetic table, and how many columns the closest
    synthetic row shares with each, against control combinations drawn the same way and never planted."""
    hs = row_hash(synth)

    def stats(c: np.ndarray) -> tuple[float, float]:
        if not len(c):
            return 0.0, 0.0
        full = float(np.isin(row_hash(c), hs).mean())
        shared = [int((synth == row).sum(axis=1).max()) for row in c]
        return full, float(np.mean(shared))

    p_full, p_shared = stats(planted)
    c_full, c_shared = stats(control)
    return {
        "planted": int(len(planted)), "control": int(len(control)), "columns": int(planted.shape[1]),
        "reappearance_rate": p_full, "control_reappearance_rate": c_full,
        "mean_columns_shared_with_closest_row": p_shared, "control_mean_columns_shared": c_shared,
    }
