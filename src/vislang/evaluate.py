"""Evaluate a run on a split, and predict classes for image files; both read only the run directory."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vislang.callbacks import read_history
from vislang.errors import VislangError
from vislang.io import atomic_write_json, atomic_write_text
from vislang.metrics.classification import classification_metrics
from vislang.report import plots
from vislang.run import load_run, read_json


@torch.no_grad()
def predict_split(task: Any, loader: Any) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``[N, C]`` and targets ``[N]`` over a loader of raw uint8 batches."""
    task.eval()
    device = next(task.parameters()).device
    probs, targets = [], []
    for x, y in loader:
        x = task.transform(x.to(device), train=False)
        probs.append(task.predict_proba(x).cpu())
        targets.append(y)
    return torch.cat(probs).numpy(), torch.cat(targets).numpy()


def _write_predictions(path: Path, probs: np.ndarray, targets: np.ndarray, class_names: list[str]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "true", "predicted", "confidence", "correct", *[f"p_{c}" for c in class_names]])
    preds = probs.argmax(1)
    for i, (t, p) in enumerate(zip(targets, preds)):
        w.writerow([i, class_names[t], class_names[p], f"{probs[i, p]:.5f}", int(t == p),
                    *[f"{v:.5f}" for v in probs[i]]])
    atomic_write_text(path, buf.getvalue())


def evaluate_run(run_dir: Path, splits: list[str] | None = None, checkpoint: str = "best",
                 dm: Any = None) -> dict[str, Any]:
    """Score the run's checkpoint on ``splits``; update metrics.json, predictions and plots."""
    from vislang.data.datamodule import ImageDataModule

    run_dir = Path(run_dir)
    cfg, info, task = load_run(run_dir, checkpoint)
    splits = splits or [cfg.eval.split]
    if dm is None:
        dm = ImageDataModule(cfg.data, cfg.seed)
        dm.setup("test")
    names = info["class_names"]
    metrics_path = run_dir / "metrics.json"
    all_metrics = read_json(metrics_path) if metrics_path.is_file() else {}
    plot_dir = run_dir / "plots"
    for split in dict.fromkeys(splits):
        if split not in dm.split_sizes:
            raise VislangError(f"Split '{split}' does not exist in this dataset; it has: {', '.join(dm.split_sizes)}.")
        probs, targets = predict_split(task, dm.dataloader(split))
        m = classification_metrics(probs, targets, names, top_k=cfg.eval.top_k)
        m["checkpoint"] = checkpoint
        all_metrics[split] = m
        _write_predictions(run_dir / f"predictions_{split}.csv", probs, targets, names)
        plots.confusion_matrix_plot(np.array(m["confusion_matrix"]), names, plot_dir / f"confusion_{split}.png",
                                    title=f"{split}: accuracy {m['accuracy']:.3f}")
        plots.roc_plot(probs, targets, names, plot_dir / f"roc_{split}.png")
        plots.pr_plot(probs, targets, names, plot_dir / f"pr_{split}.png")
    run_info = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    all_metrics["summary"] = {
        "params": run_info.get("params"), "train_time_s": run_info.get("train_time_s"),
        **{f"{s}/{k}": v for s in splits for k, v in all_metrics[s].items()
           if isinstance(v, (int, float)) and k != "n"},
    }
    atomic_write_json(metrics_path, all_metrics)
    plots.learning_curves(read_history(run_dir / "history.csv"), plot_dir)
    return all_metrics


def load_image_files(paths: list[Path], input_shape: tuple[int, int, int]) -> torch.Tensor:
    """Decode image files exactly as training data was decoded: uint8 ``[N, C, H, W]``."""
    from vislang.data.store import load_image

    c, h, w = input_shape
    arrays = []
    for p in paths:
        try:
            arrays.append(load_image(Path(p), size=(h, w), channels=c))
        except (OSError, ValueError) as err:
            raise VislangError(f"Cannot read image {p}: {err}. Is it a valid image file?") from None
    return torch.from_numpy(np.stack(arrays))


@torch.no_grad()
def predict_files(run_dir: Path, paths: list[Path], top_k: int = 5) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for each image file."""
    for p in paths:
        if not Path(p).is_file():
            raise VislangError(f"Image {p} does not exist.")
    _, info, task = load_run(Path(run_dir))
    x = task.transform(load_image_files(paths, tuple(info["input_shape"])), train=False)
    probs = task.predict_proba(x)
    k = min(top_k, probs.shape[1])
    top = probs.topk(k, dim=1)
    names = info["class_names"]
    return [[(names[i], float(p)) for p, i in zip(ps.tolist(), idx.tolist())]
            for ps, idx in zip(top.values, top.indices)]
