"""The task model: a linear model or a one-hidden-layer network over one-hot codes, and its readable file form.

The network sums one embedding row per feature code (that is a linear map of the one-hot vector; an always-on index
is the bias), then, with ``hidden`` > 0, applies ReLU and a linear head. Outputs: one logit per target code
(classification), or a mean and a log-variance (regression, on the target scaled to [0, 1] by its public bounds).
Only layers whose per-example gradients Opacus computes (Embedding, Linear) hold parameters.

A trained :class:`TaskModel` is a DP artifact (its weights are DP-SGD's output and the public layout); written with
:func:`write_task_model` it is a directory a person can read: ``model.json`` (layout, target encoding, weights),
``statement.json`` (its own privacy statement) and ``_SUCCESS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpbeam.task.data import FeatureLayout

FORMAT_VERSION = 1
LOGVAR_RANGE = (-7.0, 1.0)  # regression: the predicted log-variance is clamped to this range
PREDICT_CHUNK = 65_536


def build_net(n_inputs: int, hidden: int, outputs: int):
    """The torch module (torch is imported here, so the package imports without it)."""
    import torch
    from torch import nn

    class TaskNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(n_inputs, hidden or outputs)
            self.head = nn.Linear(hidden, outputs) if hidden else None

        def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (..., features + 1) -> (..., outputs)
            h = self.embed(idx).sum(dim=-2)
            return self.head(torch.relu(h)) if self.head is not None else h

    return TaskNet()


def init_net(net: Any, seed: int) -> None:
    """Data-independent initial weights from ``seed`` (zeros for the linear model, small normals otherwise)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if net.head is None:
            net.embed.weight.zero_()
        else:
            net.embed.weight.normal_(0.0, 0.1, generator=g)
            net.head.weight.normal_(0.0, 1.0 / np.sqrt(net.head.in_features), generator=g)
            net.head.bias.zero_()


@dataclass
class TaskModel:
    """A trained task model with what is needed to use it on model-domain codes.

    ``target_encoding``: for regression, the public ``lower``/``upper`` bounds and the target's original ``edges``
    (values are scaled to [0, 1] by the bounds); for classification, the number of classes."""

    kind: str
    layout: FeatureLayout
    hidden: int
    outputs: int
    weights: dict[str, np.ndarray]
    target_encoding: dict[str, Any]
    statement: dict[str, Any] = field(default_factory=dict)
    mix: float = 0.0  # generation's share of rows that keep the marginal model's target (spec task.mix)

    def net(self):
        import torch

        net = build_net(self.layout.n_inputs, self.hidden, self.outputs)
        net.load_state_dict({k: torch.as_tensor(v, dtype=torch.float32) for k, v in self.weights.items()})
        return net.eval()

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Model-domain feature codes (rows, features in layout order) -> class probabilities (rows, classes), or
        (rows, 2) mean and variance of the scaled target. Post-processing of the DP weights."""
        import torch

        net = self.net()
        out = []
        with torch.no_grad():
            for i in range(0, len(features), PREDICT_CHUNK):
                idx = torch.as_tensor(self.layout.indices(features[i : i + PREDICT_CHUNK]))
                z = net(idx)
                if self.kind == "classification":
                    out.append(torch.softmax(z, dim=-1).numpy())
                else:
                    var = torch.exp(torch.clamp(z[:, 1], *LOGVAR_RANGE))
                    out.append(torch.stack([z[:, 0], var], dim=1).numpy())
        width = self.outputs if self.kind == "classification" else 2
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, width))

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "layout": self.layout.to_json(),
            "hidden": self.hidden,
            "outputs": self.outputs,
            "target_encoding": self.target_encoding,
            "weights": {k: {"shape": list(v.shape), "values": v.ravel().tolist()} for k, v in self.weights.items()},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], statement: dict[str, Any] | None = None) -> "TaskModel":
        weights = {k: np.asarray(v["values"], dtype=np.float32).reshape(v["shape"]) for k, v in d["weights"].items()}
        return cls(d["kind"], FeatureLayout.from_json(d["layout"]), int(d["hidden"]), int(d["outputs"]), weights,
                   d["target_encoding"], statement or {})


def write_task_model(model: TaskModel, uri: str, overwrite: bool = False) -> None:
    """Write the model directory atomically (``_SUCCESS`` last). Refused in a process where the test-only noise
    switch was used (the model's statement would describe noise that may not have been added)."""
    from dpbeam import lake
    from dpbeam.privacy.noise import require_noise_never_disabled

    require_noise_never_disabled("a task model")
    with lake.atomic_directory(uri, overwrite=overwrite) as tmp:
        lake.write_json(tmp, "model.json", model.to_json())
        lake.write_json(tmp, "statement.json", model.statement)


def read_task_model(uri: str) -> TaskModel:
    """Read a model directory written by :func:`write_task_model`."""
    from dpbeam import lake
    from dpbeam.errors import SourceError

    fs, path = lake.filesystem(uri)
    if not fs.exists(f"{path}/_SUCCESS"):
        raise SourceError(f"{uri} is not a complete task model (no _SUCCESS); rerun the job with a task section")
    d = lake.read_json(uri, "model.json")
    if d.get("format_version") != FORMAT_VERSION:
        raise SourceError(f"{uri} has task-model format {d.get('format_version')}; this dpbeam reads {FORMAT_VERSION}")
    return TaskModel.from_json(d, lake.read_json(uri, "statement.json"))
