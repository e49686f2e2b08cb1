"""The bounded rows as DP-SGD training examples, one example per privacy unit (trusted side).

An example is one unit's kept rows (at most k after bounding), padded to k with a mask; the model's loss of the
example is the sum over its real rows. Clipping that example's gradient (:mod:`dpbeam.task.train`) therefore bounds
everything one unit contributes to a step, so DP-SGD's guarantee is per unit, with no group-privacy factor. For
row-level jobs k = 1 and every row is its own unit.

Features are one-hot codes in the model domain (the compression of rare codes chosen from noisy 1-way counts, a DP
output), each column's codes offset into one shared index space, plus one always-on index that serves as the bias.

These arrays hold real rows: they never leave the process that trains, and nothing derived from them (their number
included) is printed, logged or raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from dpbeam.aggregate import UNIT_H1, UNIT_H2, _EncodedRows

# A summary: the code matrices of bounded rows and, for unit-level jobs, their two unit-hash words.
Rows = list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]


class BoundedRows(_EncodedRows):
    """The bounded table's codes with each row's unit hash, for training on the trusted side. Its summary holds real
    rows (codes): it is only ever consumed by :func:`unit_examples` in the process that trains."""

    def partial(self, prepared: pa.RecordBatch) -> Rows:
        codes = self.row_keys(prepared)
        if UNIT_H1 in prepared.schema.names:
            return [(codes, prepared.column(UNIT_H1).to_numpy(), prepared.column(UNIT_H2).to_numpy())]
        return [(codes, None, None)]

    def merge(self, a: Rows, b: Rows) -> Rows:
        return a + b

    def zero(self) -> Rows:
        return []


@dataclass(frozen=True)
class FeatureLayout:
    """Where each feature column's one-hot codes sit in the shared index space (public: from the model domain)."""

    target: str
    features: tuple[str, ...]
    sizes: tuple[int, ...]  # model-domain size of each feature

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)

    @property
    def bias_index(self) -> int:
        return int(np.sum(self.sizes))

    @property
    def n_inputs(self) -> int:
        return self.bias_index + 1

    def indices(self, features: np.ndarray) -> np.ndarray:
        """Model-domain feature codes (rows, features) -> (rows, features + 1) indices, the last one the bias."""
        idx = features.astype(np.int64) + self.offsets[None, :]
        return np.concatenate([idx, np.full((len(idx), 1), self.bias_index, dtype=np.int64)], axis=1)

    def to_json(self) -> dict:
        return {"target": self.target, "features": list(self.features), "sizes": list(self.sizes)}

    @classmethod
    def from_json(cls, d: dict) -> "FeatureLayout":
        return cls(d["target"], tuple(d["features"]), tuple(int(s) for s in d["sizes"]))


def to_model_codes(codes: np.ndarray, names: Sequence[str], compression: dict[str, np.ndarray]) -> np.ndarray:
    """Original codes -> model-domain codes (each compressed column through its public mapping)."""
    out = codes.astype(np.int64, copy=True)
    for j, name in enumerate(names):
        mapping = compression.get(name)
        if mapping is not None:
            out[:, j] = np.asarray(mapping, dtype=np.int64)[out[:, j]]
    return out


@dataclass
class UnitExamples:
    """One example per unit: ``inputs`` (units, k, features + 1) indices, ``targets`` (units, k) float targets
    (class codes for classification, scaled values for regression), ``mask`` (units, k), 1 where a real row sits."""

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray


def group_by_unit(rows: Rows, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, unit index, slot within the unit) of every bounded row; row-level summaries make each row a unit.
    Deterministic: units are ordered by their hash, rows within a unit by their codes."""
    parts = [r for r in rows if len(r[0])]
    if not parts:
        width = rows[0][0].shape[1] if rows else 0
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros((0, width), dtype=np.int64), empty, empty
    codes = np.concatenate([p[0] for p in parts]).astype(np.int64)
    if parts[0][1] is None:  # row-level: every row is a unit
        n = len(codes)
        return codes, np.arange(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    h1 = np.concatenate([p[1] for p in parts])
    h2 = np.concatenate([p[2] for p in parts])
    order = np.lexsort(tuple(codes.T[::-1]) + (h2, h1))
    codes, h1, h2 = codes[order], h1[order], h2[order]
    new = np.ones(len(codes), dtype=bool)
    new[1:] = (h1[1:] != h1[:-1]) | (h2[1:] != h2[:-1])
    unit = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    slot = np.arange(len(codes)) - starts[unit]
    # bounding kept at most k rows per unit; the slot is always < k (a larger one would be a bounding bug)
    slot = np.minimum(slot, k - 1)
    return codes, unit.astype(np.int64), slot.astype(np.int64)


def unit_examples(codes: np.ndarray, unit: np.ndarray, slot: np.ndarray, k: int, layout: FeatureLayout,
                  names: Sequence[str], targets: np.ndarray, valid: np.ndarray | None = None) -> UnitExamples:
    """Pack model-domain ``codes`` (rows, columns in ``names`` order) and per-row ``targets`` into per-unit examples
    padded to k rows. Padding rows, and rows with ``valid`` False (a null regression target), have mask 0: their loss
    is multiplied by 0, so they add no gradient."""
    n_units = int(unit.max()) + 1 if len(unit) else 0
    feat = [list(names).index(f) for f in layout.features]
    idx = layout.indices(codes[:, feat]) if len(codes) else np.zeros((0, len(feat) + 1), dtype=np.int64)
    inputs = np.zeros((n_units, k, idx.shape[1]), dtype=np.int64)
    inputs[..., -1] = layout.bias_index
    y = np.zeros((n_units, k), dtype=np.float32)
    mask = np.zeros((n_units, k), dtype=np.float32)
    inputs[unit, slot] = idx
    y[unit, slot] = targets
    mask[unit, slot] = 1.0 if valid is None else valid.astype(np.float32)
    return UnitExamples(inputs, y, mask)
