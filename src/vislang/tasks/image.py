"""Image classification as a task (see :mod:`vislang.tasks` for the interface)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vislang.config import ExperimentConfig
from vislang.tasks.classification import ClassificationTask

Config = ExperimentConfig
default_monitor = "val/acc"


def build_model(cfg: ExperimentConfig, num_classes: int, input_shape: tuple[int, int, int]) -> torch.nn.Module:
    from vislang.models import create_model

    c, h, w = input_shape
    return create_model(cfg.model.name, num_classes=num_classes, in_channels=c, image_size=(h, w),
                        **cfg.model.kwargs())


def check_config(cfg: ExperimentConfig) -> None:
    """Fail fast (before any data is decoded) on an unknown model name or option."""
    from vislang.models import MODELS

    MODELS.get(cfg.model.name).check_kwargs(cfg.model.kwargs(), "Model")


def make_datamodule(cfg: ExperimentConfig) -> Any:
    from vislang.data.datamodule import ImageDataModule

    return ImageDataModule(cfg.data, cfg.seed)


def data_info(dm: Any) -> dict[str, Any]:
    """The facts about the data a trained model needs (written to data.json; predict reads only this)."""
    mean, std = dm.normalization  # the constants actually applied (train statistics, or 0..1 scaling)
    return {
        "dataset": dm.cfg.dataset,
        "classes": list(dm.classes),
        "class_names": list(dm.class_names),
        "input_shape": list(dm.input_shape),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "split_sizes": {k: int(v) for k, v in dm.split_sizes.items()},
        "class_counts": {k: [int(c) for c in v] for k, v in dm.class_counts.items()},
    }


def summary(info: dict[str, Any]) -> str:
    sizes = ", ".join(f"{k} {v:,}" for k, v in info["split_sizes"].items())
    return f"{len(info['classes'])} classes, images {sizes}"


def build_task(cfg: ExperimentConfig, info: dict[str, Any]) -> ClassificationTask:
    """The task (model + batch transform) for a config and a run's ``data.json`` facts."""
    from vislang.data.augment import BatchTransform

    model = build_model(cfg, len(info["classes"]), tuple(info["input_shape"]))
    transform = BatchTransform(cfg.data.augment, info["mean"], info["std"])
    return ClassificationTask(model, cfg, len(info["classes"]), transform=transform)


def prepare(task: ClassificationTask, dm: Any) -> None:
    """Data-dependent initialisation of a new run: fastnet's PCA-whitened stem from a seeded sample."""
    if hasattr(task.model, "init_whitening"):
        sample = dm.images["train"][torch.randperm(len(dm.images["train"]))[:5000]]
        with torch.no_grad():
            task.model.init_whitening(task.transform(sample, train=False))


def evaluate_run(run_dir: Path, splits: list[str] | None = None, checkpoint: str = "best",
                 dm: Any = None) -> dict[str, Any]:
    from vislang.evaluate import evaluate_run as _evaluate

    return _evaluate(run_dir, splits, checkpoint=checkpoint, dm=dm)


def predict_cli(run_dir: Path, inputs: list[Path], *, texts: list[str], top_k: int, beam: int, console: Any) -> None:
    """``vislang predict RUN IMAGE...``: the top-k classes with probabilities for each image."""
    from vislang.errors import VislangError
    from vislang.evaluate import predict_files

    if texts:
        raise VislangError(f"{run_dir} is an image classifier: give image files, not --text.")
    if not inputs:
        raise VislangError("Give one or more image files: vislang predict RUN img1.jpg img2.png")
    for path, top in zip(inputs, predict_files(run_dir, inputs, top_k)):
        console.print(f"[bold]{path}[/]")
        for name, p in top:
            console.print(f"  {p:7.2%}  {name}")
