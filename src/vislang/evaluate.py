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
from vislang.run import inference_autocast, load_run, read_json


@torch.no_grad()
def predict_split(task: Any, loader: Any) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``[N, C]`` and targets ``[N]`` over a loader of raw uint8 image batches (made ready by
    ``task.transform``), or of ready inputs such as text ``(ids, lengths)`` tuples (``task.transform`` None)."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    task.eval()
    device = next(task.parameters()).device
    probs, targets = [], []
    for x, y in loader:
        x = move_data_to_device(x, device)
        if task.transform is not None:
            x = task.transform(x, train=False)
        with inference_autocast(getattr(task, "cfg", None), device):
            probs.append(task.predict_proba(x).cpu())
        targets.append(y)
    return torch.cat(probs).numpy(), torch.cat(targets).numpy()


def _write_predictions(path: Path, probs: np.ndarray, targets: np.ndarray, class_names: list[str],
                       texts: list[str] | None = None) -> None:
    """One row per item; ``texts`` (text tasks) adds the input text as the last column."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "true", "predicted", "confidence", "correct", *[f"p_{c}" for c in class_names],
                *(["text"] if texts is not None else [])])
    preds = probs.argmax(1)
    for i, (t, p) in enumerate(zip(targets, preds)):
        w.writerow([i, class_names[t], class_names[p], f"{probs[i, p]:.5f}", int(t == p),
                    *[f"{v:.5f}" for v in probs[i]], *([texts[i]] if texts is not None else [])])
    atomic_write_text(path, buf.getvalue())


def evaluate_run(run_dir: Path, splits: list[str] | None = None, checkpoint: str = "best",
                 dm: Any = None, light: bool = False, loaded: tuple[Any, dict[str, Any], Any] | None = None,
                 outputs: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, Any]:
    """Score the run's checkpoint on ``splits``; update metrics.json, predictions and plots
    (``light``: numbers only, no plots: sweep trials). ``loaded``: the run's ``load_run(run_dir, checkpoint,
    device=None)`` when the caller already holds it (the checkpoint is then not read a second time).
    ``outputs``: a dict that receives each split's ``(probs, targets)``, for callers that use the predictions
    again (the text explanations) instead of predicting the split a second time."""
    from vislang.tasks import task_spec

    run_dir = Path(run_dir)
    # score on the GPU where there is one
    cfg, info, task = loaded if loaded is not None else load_run(run_dir, checkpoint, device=None)
    splits = splits or [cfg.eval.split]
    if dm is None:
        dm = task_spec(cfg.task).make_datamodule(cfg)
        dm.setup("test")
    names = info["class_names"]
    metrics_path = run_dir / "metrics.json"
    all_metrics = read_json(metrics_path) if metrics_path.is_file() else {}
    plot_dir = run_dir / "plots"
    for split in dict.fromkeys(splits):
        if split not in dm.split_sizes:
            raise VislangError(f"Split '{split}' does not exist in this dataset; it has: {', '.join(dm.split_sizes)}.")
        probs, targets = predict_split(task, dm.dataloader(split))
        if outputs is not None:
            outputs[split] = (probs, targets)
        threshold = _split_threshold(run_dir, cfg, split, probs, targets, checkpoint, task, dm)
        m = classification_metrics(probs, targets, names, top_k=cfg.eval.top_k, threshold=threshold)
        m["checkpoint"] = checkpoint
        all_metrics[split] = m
        _write_predictions(run_dir / f"predictions_{split}.csv", probs, targets, names,
                           texts=dm.texts(split) if hasattr(dm, "texts") else None)
        if light:
            continue
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
    if not light:
        plots.learning_curves(read_history(run_dir / "history.csv"), plot_dir)
    return all_metrics


def _split_threshold(run_dir: Path, cfg: Any, split: str, probs: np.ndarray, targets: np.ndarray,
                     checkpoint: str, task: Any, dm: Any) -> float | None:
    """The binary decision threshold for ``split`` (``eval.threshold``): tuned on val's predictions by the
    checkpoint being scored (and saved in the run's threshold.json, per checkpoint), read back for other
    splits, or fixed; None = argmax. Scoring another split with a checkpoint whose threshold was never tuned
    (``vislang evaluate RUN --checkpoint last`` after a run evaluated on ``best``) predicts val first: a
    threshold tuned on one checkpoint's probabilities does not carry to another's."""
    method = getattr(cfg.eval, "threshold", None)
    if method is None or probs.shape[1] != 2:
        return None
    if not isinstance(method, str):
        return float(method)
    if split == "val":
        return _tune_threshold(run_dir, method, checkpoint, probs, targets)
    t = run_threshold(run_dir, checkpoint)
    if t is None and "val" in dm.split_sizes:
        val_probs, val_targets = predict_split(task, dm.dataloader("val"))
        t = _tune_threshold(run_dir, method, checkpoint, val_probs, val_targets)
    return t


def _tune_threshold(run_dir: Path, method: str, checkpoint: str, probs: np.ndarray,
                    targets: np.ndarray) -> float | None:
    """Tune ``method`` on val's ``probs`` and record it in threshold.json under ``checkpoint``."""
    from vislang.metrics.classification import tune_threshold

    if len(np.unique(targets)) != 2:
        return run_threshold(run_dir, checkpoint)
    t, score = tune_threshold(probs[:, 1], targets, method)
    path = run_dir / "threshold.json"
    saved = read_json(path) if path.is_file() else {}
    by_checkpoint = saved.get("by_checkpoint", {}) if saved.get("method") == method else {}
    by_checkpoint[checkpoint] = {"threshold": t, f"val_{method}": score}
    # the top-level fields are the latest tuning (what threshold.json held before it kept one per checkpoint)
    atomic_write_json(path, {"threshold": t, "method": method, f"val_{method}": score, "checkpoint": checkpoint,
                             "by_checkpoint": by_checkpoint})
    return t


def run_threshold(run_dir: Path, checkpoint: str | None = None) -> float | None:
    """The decision threshold a binary run applies with ``checkpoint`` (default: the one the run is evaluated
    with, ``eval.checkpoint``): fixed in its config, or tuned on val's predictions by that checkpoint; None
    when there is none (argmax)."""
    from vislang.config import load_config

    cfg = load_config(Path(run_dir) / "config.yaml")
    method = getattr(cfg.eval, "threshold", None)
    if method is None or not isinstance(method, str):
        return None if method is None else float(method)
    path = Path(run_dir) / "threshold.json"
    if not path.is_file():
        return None
    saved = read_json(path)
    by_checkpoint = saved.get("by_checkpoint")
    if by_checkpoint is None:  # written before thresholds were kept per checkpoint: the run's own
        return float(saved["threshold"])
    entry = by_checkpoint.get(checkpoint or cfg.eval.checkpoint)
    return float(entry["threshold"]) if entry else None


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
    _, info, task = load_run(Path(run_dir), None)  # the checkpoint the run's metrics (and threshold) are for
    x = task.transform(load_image_files(paths, tuple(info["input_shape"])), train=False)
    with inference_autocast(task.cfg, next(task.parameters()).device):
        probs = task.predict_proba(x)
    k = min(top_k, probs.shape[1])
    top = probs.topk(k, dim=1)
    names = info["class_names"]
    return [[(names[i], float(p)) for p, i in zip(ps.tolist(), idx.tolist())]
            for ps, idx in zip(top.values, top.indices)]
