"""Utility: train on synthetic, test on real (TSTR), with training on real as the reference (TRTR).

Compares with the real data, so it is NOT differentially private: for the data owner, never part of a release.

Models (scikit-learn): histogram gradient boosting, and logistic regression on one-hot codes (ridge regression for a
numeric target). Features are the codes of the release's domain. A target with at most ``MAX_CLASSES`` codes (or
categorical/boolean) is a classification task scored by accuracy and ROC AUC (one-vs-rest macro mean for more than
two classes); otherwise a regression on the target's bin codes scored by RMSE (in bins).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpbeam.domain import TableDomain
from dpbeam.errors import SpecError

MAX_CLASSES = 20
MAX_TRAIN = 50_000
MODELS = ("gradient boosting", "logistic regression")
THREADS = int(os.environ.get("DPBEAM_EVAL_THREADS", "1"))  # OpenMP/BLAS threads of model fits


def few_threads():
    """Limit scikit-learn's OpenMP and BLAS threads to ``THREADS`` (default 1): these fits are small, and on a shared
    machine oversubscribed OpenMP threads spin and slow everything (a 3-second fit took minutes)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=THREADS)


def task_of(domain: TableDomain, target: str) -> str:
    if target not in domain.names:
        raise SpecError(f"target column {target!r} is not a released column ({domain.names}); pick one with --target")
    col = domain[target]
    return "classification" if col.kind in ("categorical", "boolean") or col.size <= MAX_CLASSES else "regression"


def _model(name: str, task: str, categorical: np.ndarray):
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    if name == "gradient boosting":
        cls = HistGradientBoostingClassifier if task == "classification" else HistGradientBoostingRegressor
        return cls(max_iter=100, categorical_features=categorical if categorical.any() else None, random_state=0)
    linear = LogisticRegression(max_iter=300) if task == "classification" else Ridge()
    return make_pipeline(OneHotEncoder(handle_unknown="ignore"), linear)


def _fit(name: str, task: str, categorical: np.ndarray, x: np.ndarray, y: np.ndarray):
    if task == "classification" and len(np.unique(y)) < 2:
        from sklearn.dummy import DummyClassifier

        return DummyClassifier(strategy="most_frequent").fit(x, y)
    return _model(name, task, categorical).fit(x, y)


def _proba(model, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities over every code of the target (classes the model never saw get 0)."""
    p = model.predict_proba(x)
    out = np.zeros((len(x), n_classes))
    out[:, np.asarray(model.classes_, dtype=np.int64)] = p
    return out


def scores(task: str, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """accuracy and AUC from class probabilities, or RMSE from predictions."""
    if task == "regression":
        return {"rmse": float(np.sqrt(np.mean((pred - y) ** 2)))} if len(y) else {}
    from sklearn.metrics import roc_auc_score

    out = {"accuracy": float(np.mean(pred.argmax(axis=1) == y))} if len(y) else {}
    aucs = []
    for c in np.unique(y) if pred.shape[1] > 2 else [1]:
        pos = y == c
        if 0 < pos.sum() < len(y):
            aucs.append(roc_auc_score(pos, pred[:, c]))
    if aucs:
        out["auc"] = float(np.mean(aucs))
    return out


@dataclass
class UtilityResult:
    summary: dict[str, Any]
    y_test: np.ndarray
    predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # model -> trained on -> pred


def utility(
    train_real: np.ndarray,
    test_real: np.ndarray,
    synth: np.ndarray,
    domain: TableDomain,
    target: str,
    seed: int = 0,
    progress: Any = None,
) -> UtilityResult:
    """TSTR and TRTR for ``target``: each model trained on (a sample of at most ``MAX_TRAIN`` rows of) the synthetic
    and the real training rows, tested on ``test_real`` (real rows the synthesizer should not have seen)."""
    task = task_of(domain, target)
    j = domain.index(target)
    keep = [i for i in range(len(domain.names)) if i != j]
    categorical = np.array([domain.columns[i].kind in ("categorical", "boolean") and domain.columns[i].size <= 255
                            for i in keep])
    rng = np.random.default_rng(seed)

    def xy(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(c) > MAX_TRAIN:
            c = c[rng.choice(len(c), MAX_TRAIN, replace=False)]
        return c[:, keep].astype(np.int64), c[:, j].astype(np.int64)

    x_test, y_test = test_real[:, keep].astype(np.int64), test_real[:, j].astype(np.int64)
    result = UtilityResult({"target": target, "task": task, "test_rows_are": "real rows", "models": {}}, y_test)
    with few_threads():
        _fit_all(result, train_real, synth, x_test, xy, task, categorical, domain[target].size, progress)
    return result


def _fit_all(result, train_real, synth, x_test, xy, task, categorical, n_classes, progress) -> None:
    y_test = result.y_test
    for name in MODELS:
        result.predictions[name] = {}
        result.summary["models"][name] = {}
        for trained_on, rows in (("synthetic", synth), ("real", train_real)):
            x, y = xy(rows)
            model = _fit(name, task, categorical, x, y)
            pred = (_proba(model, x_test, n_classes) if task == "classification"
                    else model.predict(x_test).astype(np.float64))
            result.predictions[name][trained_on] = pred
            result.summary["models"][name][trained_on] = scores(task, y_test, pred)
            if progress:
                progress(1)
