"""Labels for synthetic features from the DP task model (post-processing).

The marginal model samples whole rows; :class:`TaskGuidedModel` then redraws each row's target from the task model's
predictive distribution given the row's synthetic features, except that with probability ``mix`` a row keeps the
target the marginal model drew (its own conditional given the features). Every input here is a DP output (the
measurements' model, the DP-SGD weights) or public, and the randomness is the spec's seed: post-processing, which
costs no budget and copies nothing real.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dpbeam.domain import BinnedDomain
from dpbeam.measurements import MeasurementsArtifact
from dpbeam.task.model import TaskModel


def draw_labels(model: TaskModel, artifact: MeasurementsArtifact, codes: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """One target code (model domain) per row of model-domain ``codes``, drawn from the task model."""
    names = artifact.domain.names
    features = codes[:, [names.index(f) for f in model.layout.features]]
    pred = model.predict(features)
    if model.kind == "classification":
        u = rng.random(len(pred))
        return np.minimum((np.cumsum(pred, axis=1) < u[:, None]).sum(axis=1), pred.shape[1] - 1)
    enc = model.target_encoding
    scaled = np.clip(pred[:, 0] + np.sqrt(pred[:, 1]) * rng.standard_normal(len(pred)), 0.0, 1.0)
    value = enc["lower"] + scaled * (enc["upper"] - enc["lower"])
    edges = np.asarray(enc["edges"], dtype=np.float64)
    original = np.clip(np.searchsorted(edges, value, side="right") - 1, 0, len(edges) - 2)
    mapping = artifact.compression.get(model.layout.target)
    return np.asarray(mapping)[original] if mapping is not None else original


@dataclass
class TaskGuidedModel:
    """A fitted marginal model whose samples get their target from the task model (see the module doc)."""

    base: Any
    task: TaskModel
    artifact: MeasurementsArtifact
    mix: float

    @property
    def engine(self) -> str:
        return self.base.engine

    def sample(self, rows: int, seed: int) -> np.ndarray:
        codes = self.base.sample(rows, seed=seed)
        rng = np.random.default_rng([seed, 0x7A5C])
        j = self.artifact.domain.names.index(self.task.layout.target)
        keep = rng.random(len(codes)) < self.mix
        col = self.artifact.domain[self.task.layout.target]
        if self.task.kind == "regression" and col.nullable:  # a null target stays null (the marginal model's share)
            mapping = self.artifact.compression.get(col.name)
            null = col.null_code if mapping is None else int(np.asarray(mapping)[col.null_code])
            keep |= codes[:, j] == null
        labels = draw_labels(self.task, self.artifact, codes, rng)
        out = codes.copy()
        out[~keep, j] = labels[~keep].astype(out.dtype)
        return out


def regression_encoding(col: BinnedDomain) -> dict[str, Any]:
    """The public scaling of a regression target: its bounds and bin edges."""
    return {"lower": float(col.lower), "upper": float(col.upper), "edges": [float(e) for e in col.edges]}


def regression_targets(col: BinnedDomain, original_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's target scaled to [0, 1] (its bin's midpoint between the public bounds), and whether it is a value
    (False for the null code, which is not trained on)."""
    edges = np.asarray(col.edges, dtype=np.float64)
    top = edges[1:] - (1.0 if col.binned_kind == "integer" else 0.0)
    mids = (edges[:-1] + top) / 2.0
    span = max(float(col.upper) - float(col.lower), 1e-12)
    valid = original_codes < col.n_values
    scaled = np.where(valid, (mids[np.minimum(original_codes, col.n_values - 1)] - float(col.lower)) / span, 0.0)
    return scaled.astype(np.float32), valid
