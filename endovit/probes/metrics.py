"""Probe metrics: accuracy and macro F1 for one class per frame, mean average precision for multi-label;
computed as scikit-learn does (``f1_score(average="macro")``, ``average_precision_score``)."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["accuracy", "macro_f1", "average_precision", "score_names", "score", "format_table"]


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    return float((pred == target).mean())


def macro_f1(pred: np.ndarray, target: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in ``target`` or ``pred``."""
    f1s = []
    for c in np.union1d(pred, target):
        tp = np.sum((pred == c) & (target == c))
        f1s.append(2 * tp / (np.sum(pred == c) + np.sum(target == c)))
    return float(np.mean(f1s))


def average_precision(scores: np.ndarray, target: np.ndarray) -> float:
    """Sum over score thresholds of (recall step) x precision; NaN when ``target`` has no positive."""
    if not target.any():
        return math.nan
    order = np.argsort(-scores, kind="stable")
    scores, target = scores[order], target[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp = np.cumsum(target)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def score_names(multilabel: bool) -> tuple[str, ...]:
    """What ``score`` reports besides per-class APs: ``map`` for multi-label, ``acc`` and ``f1`` otherwise."""
    return ("map",) if multilabel else ("acc", "f1")


def score(scores: np.ndarray, target: np.ndarray, names: list[str]) -> dict[str, float]:
    """``acc`` and ``f1`` for one class per frame; for multi-label ``map`` (over the classes with a positive
    test frame) and ``ap/<class>``."""
    if target.ndim == 1:
        pred = scores.argmax(axis=1)
        return {"acc": accuracy(pred, target), "f1": macro_f1(pred, target)}
    aps = {name: average_precision(scores[:, c], target[:, c]) for c, name in enumerate(names)}
    present = [ap for ap in aps.values() if not math.isnan(ap)]
    return {"map": float(np.mean(present)) if present else math.nan, **{f"ap/{n}": ap for n, ap in aps.items()}}


def format_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Rows ``model  probe`` (e.g. ``knn_cls``), one column per metric, in percent."""
    columns = list(dict.fromkeys(m for probes in results.values() for metrics in probes.values() for m in metrics))
    heads = [c.removeprefix("ap/").removeprefix("iou/") for c in columns]
    width = max(len(m) for m in [*results, "model"])
    widths = [max(len(h), 5) for h in heads]
    cells = [f"{h:>{w}}" for h, w in zip(heads, widths, strict=True)]
    lines = ["  ".join([f"{'model':<{width}}", f"{'probe':<10}", *cells])]
    for model, probes in results.items():
        for probe, metrics in probes.items():
            cells = [f"{100 * metrics.get(c, math.nan):>{w}.1f}" for c, w in zip(columns, widths, strict=True)]
            lines.append("  ".join([f"{model:<{width}}", f"{probe:<10}", *cells]))
    return "\n".join(lines)
