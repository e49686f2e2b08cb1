"""The task model: a linear model or a one-hidden-layer network over one-hot codes, and its readable file form.

The network sums one embedding row per feature code (that is a linear map of the one-hot vector; an always-on index
is the bias), then, with ``hidden`` > 0, applies ReLU and a linear head. Outputs: one logit per model-domain code of
the target, for both kinds: a class (classification) or one of the target's public bins (regression: a softmax over
the bins, so the predictive distribution can take the target's own shape, skewed or multimodal; a null is a code).
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

FORMAT_VERSION = 2  # 2: regression by a softmax over the bins (1 had a Gaussian head)
PREDICT_CHUNK = 65_536


def regression_basis(col: Any, mapping: Any, model_size: int) -> np.ndarray:
    """The fixed basis of the regression head, (2, model codes): each model-domain code's position m in [-1, 1]
    (the midpoint of its public bin, scaled by the public bounds; a code that the DP compression formed from
    several bins takes their midpoints' mean; the null code sits at 0) and m^2. Public: bounds, edges, compression."""
    edges = np.asarray(col.edges, dtype=np.float64)
    top = edges[1:] - (1.0 if col.binned_kind == "integer" else 0.0)
    mids = (edges[:-1] + top) / 2.0
    span = max(float(col.upper) - float(col.lower), 1e-12)
    pos = np.concatenate([2.0 * (mids - float(col.lower)) / span - 1.0, [0.0] * (col.size - col.n_values)])
    codes = np.arange(col.size) if mapping is None else np.asarray(mapping, dtype=np.int64)
    total = np.bincount(codes, weights=pos, minlength=model_size)[:model_size]
    count = np.bincount(codes, minlength=model_size)[:model_size]
    m = np.divide(total, count, out=np.zeros(model_size), where=count > 0)
    return np.stack([m, m * m])


def build_net(n_inputs: int, hidden: int, outputs: int, basis: np.ndarray | None = None):
    """The torch module (torch is imported here, so the package imports without it).

    Without ``basis``: one logit per output code from the summed embeddings (and the hidden layer). With ``basis``
    (regression, shape (b, outputs)): the features give b numbers u(x), and the logits over the target's bins are
    ``prior + u(x) @ basis``: a per-bin ``prior`` (the marginal's shape, an embedding of one always-on index) shifted
    and narrowed by the row (with the m, m^2 basis a discretized Gaussian times the prior). It keeps the softmax over
    bins, so the target's own shape can be reproduced, with b weights per input instead of one per bin: DP-SGD's noise
    is spread over far fewer coordinates."""
    import torch
    from torch import nn

    width = outputs if basis is None else int(basis.shape[0])

    class TaskNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(n_inputs, hidden or width)
            self.head = nn.Linear(hidden, width) if hidden else None
            if basis is not None:
                self.prior = nn.Embedding(1, outputs)
                self.register_buffer("basis", torch.as_tensor(np.asarray(basis), dtype=torch.float32))

        def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (..., features + 1) -> (..., outputs)
            h = self.embed(idx).sum(dim=-2)
            u = self.head(torch.relu(h)) if self.head is not None else h
            if basis is None:
                return u
            return self.prior(torch.zeros(idx.shape[:-1], dtype=torch.long, device=idx.device)) + u @ self.basis

    return TaskNet()


def init_net(net: Any, seed: int) -> None:
    """Data-independent initial weights from ``seed`` (zeros for the linear model, small normals otherwise)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if getattr(net, "prior", None) is not None:
            net.prior.weight.zero_()
        if net.head is None:
            net.embed.weight.zero_()
        else:
            net.embed.weight.normal_(0.0, 0.1, generator=g)
            net.head.weight.normal_(0.0, 1.0 / np.sqrt(net.head.in_features), generator=g)
            net.head.bias.zero_()


@dataclass
class TaskModel:
    """A trained task model with what is needed to use it on model-domain codes.

    ``target_encoding``: the number of model-domain codes of the target (``classes``), for both kinds; for regression
    also the head's fixed ``basis`` (:func:`regression_basis`)."""

    kind: str
    layout: FeatureLayout
    hidden: int
    outputs: int
    weights: dict[str, np.ndarray]
    target_encoding: dict[str, Any]
    statement: dict[str, Any] = field(default_factory=dict)
    mix: float = 0.0  # generation's weight on the marginal model's conditional (spec task.mix)
    combine: str = "geometric"  # how the two conditionals are pooled (spec task.combine, dpbeam.task.guide)
    calibrate: bool = True  # labels' marginal set to the marginal model's (spec task.calibrate)

    @property
    def basis(self) -> np.ndarray | None:
        b = self.target_encoding.get("basis")
        return None if b is None else np.asarray(b, dtype=np.float64)

    def net(self):
        import torch

        net = build_net(self.layout.n_inputs, self.hidden, self.outputs, self.basis)
        state = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in self.weights.items()}
        if self.basis is not None:
            state["basis"] = torch.as_tensor(self.basis, dtype=torch.float32)
        net.load_state_dict(state)
        return net.eval()

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Model-domain feature codes (rows, features in layout order) -> the target's predictive distribution over its
        model-domain codes (rows, codes). Post-processing of the DP weights."""
        import torch

        net = self.net()
        out = []
        with torch.no_grad():
            for i in range(0, len(features), PREDICT_CHUNK):
                idx = torch.as_tensor(self.layout.indices(features[i : i + PREDICT_CHUNK]))
                out.append(torch.softmax(net(idx), dim=-1).numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, self.outputs))

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "layout": self.layout.to_json(),
            "hidden": self.hidden,
            "outputs": self.outputs,
            "target_encoding": self.target_encoding,
            "mix": self.mix,
            "combine": self.combine,
            "calibrate": self.calibrate,
            "weights": {k: {"shape": list(v.shape), "values": v.ravel().tolist()} for k, v in self.weights.items()},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], statement: dict[str, Any] | None = None) -> "TaskModel":
        weights = {k: np.asarray(v["values"], dtype=np.float32).reshape(v["shape"]) for k, v in d["weights"].items()}
        return cls(d["kind"], FeatureLayout.from_json(d["layout"]), int(d["hidden"]), int(d["outputs"]), weights,
                   d["target_encoding"], statement or {}, mix=float(d["mix"]), combine=str(d["combine"]),
                   calibrate=bool(d["calibrate"]))


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
