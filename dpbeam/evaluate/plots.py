"""Plots for the report, as PNG bytes encoded in base64 (inlined in the HTML). matplotlib, headless (Agg)."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from dpbeam.domain import TableDomain

MAX_BARS = 40


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(w: float, h: float):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h))


def column_distribution(real: np.ndarray, synth: np.ndarray, labels: list[str], name: str) -> str:
    """Real vs synthetic share of each code of one column (codes grouped into at most MAX_BARS bars)."""
    size = len(labels)
    groups = np.minimum(np.arange(size) * MAX_BARS // max(size, 1), MAX_BARS - 1) if size > MAX_BARS else np.arange(size)
    n = int(groups.max()) + 1 if size else 1
    p = np.bincount(groups[real], minlength=n) / max(len(real), 1)
    q = np.bincount(groups[synth], minlength=n) / max(len(synth), 1)
    fig, ax = _figure(6, 2.6)
    x = np.arange(n)
    ax.bar(x - 0.2, p, width=0.4, label="real", color="#4c72b0")
    ax.bar(x + 0.2, q, width=0.4, label="synthetic", color="#dd8452")
    if size <= MAX_BARS and size <= 20:
        ax.set_xticks(x, [lbl[:12] for lbl in labels], rotation=45, ha="right", fontsize=7)
    else:
        ax.set_xlabel("code" if size <= MAX_BARS else f"code (grouped {size} -> {n})")
    ax.set_title(name, fontsize=10)
    ax.set_ylabel("share")
    ax.legend(fontsize=7)
    return _png(fig)


def distributions(real: np.ndarray, synth: np.ndarray, domain: TableDomain) -> dict[str, str]:
    return {c.name: column_distribution(real[:, j].astype(np.int64), synth[:, j].astype(np.int64), c.labels(), c.name)
            for j, c in enumerate(domain.columns)}


def association(assoc: dict[str, Any]) -> str:
    """Real, synthetic and absolute-difference association matrices side by side."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    names = assoc["columns"]
    real, synth = np.asarray(assoc["real"]), np.asarray(assoc["synthetic"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
    for ax, m, title, cmap in zip(axes, (real, synth, np.abs(real - synth)), ("real", "synthetic", "|difference|"),
                                  ("viridis", "viridis", "magma")):
        im = ax.imshow(np.abs(m) if title != "|difference|" else m, vmin=0, vmax=1, cmap=cmap)
        ax.set_title(title)
        ax.set_xticks(range(len(names)), [n[:10] for n in names], rotation=90, fontsize=6)
        ax.set_yticks(range(len(names)), [n[:10] for n in names], fontsize=6)
    fig.colorbar(im, ax=axes, shrink=0.8)
    return _png(fig)


def roc(curves: dict[str, dict[str, Any]]) -> str:
    fig, ax = _figure(4.5, 4.2)
    for name, c in curves.items():
        ax.plot(c["fpr"], c["tpr"], label=f"{name} (AUC {c['auc']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("membership inference ROC")
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def bars(values: dict[str, float], title: str, ylabel: str, line: float | None = None, line_label: str = "") -> str:
    fig, ax = _figure(5.5, 3)
    names = list(values)
    ax.bar(range(len(names)), [values[n] for n in names], color="#55a868")
    ax.set_xticks(range(len(names)), [n[:18] for n in names], rotation=30, ha="right", fontsize=8)
    if line is not None:
        ax.axhline(line, color="#c44e52", linestyle="--", label=line_label)
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    return _png(fig)
