"""Final classification metrics from predicted probabilities (scikit-learn does the arithmetic).

``classification_metrics`` returns a JSON-ready dict: accuracy, top-k, macro/weighted
precision/recall/F1, per-class table, confusion matrix and one-vs-rest ROC AUC; for binary
tasks also average precision (area under the precision-recall curve).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)


def top_k_accuracy(probs: np.ndarray, targets: np.ndarray, k: int) -> float:
    k = min(k, probs.shape[1])
    top = np.argpartition(-probs, kth=k - 1, axis=1)[:, :k]
    return float((top == targets[:, None]).any(axis=1).mean())


def roc_auc(probs: np.ndarray, targets: np.ndarray) -> float | None:
    """Macro one-vs-rest ROC AUC over the classes present in ``targets`` (None if undefined)."""
    present = np.unique(targets)
    if len(present) < 2:
        return None
    if probs.shape[1] == 2:
        return float(roc_auc_score(targets, probs[:, 1]))
    aucs = [roc_auc_score(targets == c, probs[:, c]) for c in present]
    return float(np.mean(aucs))


def classification_metrics(
    probs: np.ndarray, targets: np.ndarray, class_names: list[str], top_k: int = 5,
    threshold: float | None = None,
) -> dict[str, Any]:
    """All end-of-run metrics for one split; binary tasks decide ``p(class 1) >= threshold`` when given."""
    n_classes = probs.shape[1]
    preds = probs.argmax(1)
    if threshold is not None and n_classes == 2:
        preds = (probs[:, 1] >= threshold).astype(np.int64)
    labels = np.arange(n_classes)
    p, r, f, support = precision_recall_fscore_support(targets, preds, labels=labels, zero_division=0)
    out: dict[str, Any] = {
        "n": int(len(targets)),
        "accuracy": float((preds == targets).mean()),
    }
    if n_classes > top_k:
        out[f"top{top_k}_accuracy"] = top_k_accuracy(probs, targets, top_k)
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(
            targets, preds, labels=labels, average=avg, zero_division=0
        )
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = float(ap), float(ar), float(af)
    auc = roc_auc(probs, targets)
    if auc is not None:
        out["roc_auc_ovr"] = auc
    if n_classes == 2 and len(np.unique(targets)) == 2:
        out["average_precision"] = float(average_precision_score(targets, probs[:, 1]))
    out["per_class"] = [
        {"class": name, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, name in enumerate(class_names)
    ]
    out["confusion_matrix"] = confusion_matrix(targets, preds, labels=labels).tolist()
    if threshold is not None and n_classes == 2:
        out["threshold"] = float(threshold)
        out["accuracy_argmax"] = float((probs.argmax(1) == targets).mean())
    return out


def tune_threshold(scores: np.ndarray, targets: np.ndarray, method: str = "f1") -> tuple[float, float]:
    """The threshold on positive-class scores maximising F1 of the positive class (``f1``) or Youden's
    J = TPR - FPR (``youden``) over ``targets`` (0/1); returns (threshold, best score)."""
    if method == "f1":
        precision, recall, thresholds = precision_recall_curve(targets, scores)
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        best = int(np.argmax(f1))
        return float(thresholds[best]), float(f1[best])
    fpr, tpr, thresholds = roc_curve(targets, scores)
    j = (tpr - fpr)[1:]  # the first threshold is +inf (nothing positive)
    best = int(np.argmax(j))
    return float(thresholds[1:][best]), float(j[best])


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics only (for tables and comparisons)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "n"}
