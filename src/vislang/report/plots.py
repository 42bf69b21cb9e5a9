"""PNG plots of a run: learning curves, confusion matrix, ROC and precision-recall curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import auc, precision_recall_curve, roc_curve  # noqa: E402

from vislang.io import atomic_save  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    atomic_save(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
    return path


def epoch_axis(ax: plt.Axes) -> None:
    """Label the x axis "epoch", with whole-number ticks only (no 2.5 on a 20-epoch run)."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def learning_curves(history: list[dict[str, float]], out_dir: Path) -> list[Path]:
    """loss.png (train and val loss) and accuracy.png (train and val accuracy) per epoch."""
    if not history:
        return []
    epochs = [int(h["epoch"]) + 1 for h in history]
    paths = []
    for metric, fname in (("loss", "loss.png"), ("acc", "accuracy.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for split, style in (("train", "-o"), ("val", "-s")):
            key = f"{split}/{metric}"
            pts = [(e, h[key]) for e, h in zip(epochs, history) if h.get(key) not in (None, "")]
            if pts:
                ax.plot(*zip(*pts), style, ms=3, label=split)
        epoch_axis(ax)
        ax.set_ylabel("accuracy" if metric == "acc" else "loss")
        ax.grid(alpha=0.3)
        ax.legend()
        paths.append(_save(fig, out_dir / fname))
    return paths


def confusion_matrix_plot(cm: np.ndarray, class_names: list[str], path: Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (recall on the diagonal) with counts in small classes."""
    cm = np.asarray(cm)
    n = len(class_names)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = min(4 + 0.35 * n, 16)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), class_names, rotation=90 if n > 6 else 45, ha="center" if n > 6 else "right",
                  fontsize=max(5, 10 - n // 8))
    ax.set_yticks(range(n), class_names, fontsize=max(5, 10 - n // 8))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (rows normalised)")
    if n <= 15:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    return _save(fig, path)


def roc_plot(probs: np.ndarray, targets: np.ndarray, class_names: list[str], path: Path) -> Path | None:
    """One-vs-rest ROC curve per class (up to 10 drawn individually) and the macro average."""
    n = probs.shape[1]
    classes = [c for c in range(n) if 0 < (targets == c).sum() < len(targets)]
    if not classes:
        return None
    if n == 2:
        classes = [1]
    fig, ax = plt.subplots(figsize=(6, 5))
    grid = np.linspace(0, 1, 201)
    tprs = []
    for c in classes:
        fpr, tpr, _ = roc_curve(targets == c, probs[:, c])
        tprs.append(np.interp(grid, fpr, tpr))
        if len(classes) <= 10:
            ax.plot(fpr, tpr, lw=1, label=f"{class_names[c]} (AUC {auc(fpr, tpr):.3f})")
    if len(classes) > 1:
        mean = np.mean(tprs, 0)
        ax.plot(grid, mean, "k--", lw=2, label=f"macro average (AUC {auc(grid, mean):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC (one vs rest)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def pr_plot(probs: np.ndarray, targets: np.ndarray, class_names: list[str], path: Path) -> Path | None:
    """Precision-recall curve of the positive class (binary tasks)."""
    if probs.shape[1] != 2 or len(np.unique(targets)) < 2:
        return None
    precision, recall, _ = precision_recall_curve(targets == 1, probs[:, 1])
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.plot(recall, precision, lw=2, label=f"{class_names[1]} (AUC {auc(recall, precision):.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    return _save(fig, path)
