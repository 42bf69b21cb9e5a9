"""Image classification as a task (see :mod:`vislang.tasks` for the interface).

Models built from scratch (mlp, cnn, resnet, vgg, fastnet) see images normalised with the
dataset's statistics. The pretrained ``timm`` model sees its backbone's own preprocessing (input
size, interpolation, mean/std, grayscale repeated to RGB); with ``freeze: all`` its features are
computed once per image and cached (:mod:`vislang.data.features`) and only the head trains.
"""

from __future__ import annotations

import logging
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from vislang.config import ExperimentConfig
from vislang.tasks.classification import ClassificationTask, class_weights_tensor

Config = ExperimentConfig
default_monitor = "val/acc"
PRETRAINED_MODELS = ("timm",)
RESIZE_ON_DECODE = ("image_folder", "image_csv")  # photos of any size: decode straight to the model's size

log = logging.getLogger("vislang")


class ImageClassificationTask(ClassificationTask):
    """Classification of images, or of cached backbone features ``[B, D]`` / ``[B, V, D]`` (V test-time views)."""

    def tta_views(self, x: Any) -> list[Any]:
        if isinstance(x, (tuple, list)):  # a cached frozen prefix: grids [B, (V,) C, h, w] and pooled layers [B, (V,) P]
            return [tuple(t[:, v] for t in x) for v in range(x[0].shape[1])] if x[0].dim() == 5 else [x]
        if x.is_floating_point() and x.dim() == 3:
            return list(x.unbind(1))
        if x.dim() == 2:
            return [x]
        return super().tta_views(x)


def is_pretrained(cfg: ExperimentConfig) -> bool:
    return cfg.model.name in PRETRAINED_MODELS


@lru_cache(maxsize=8)
def _backbone_data_config(backbone: str) -> dict[str, Any]:
    from vislang.models.backbones import load_backbone

    _, cfg = load_backbone(backbone, None)
    return {k: cfg[k] for k in ("backbone", "input_size", "interpolation", "mean", "std", "crop_pct", "num_features")}


def backbone_preprocess(cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The pretrained backbone's data config (input size, interpolation, mean/std), or None."""
    if not is_pretrained(cfg):
        return None
    kwargs = cfg.model.kwargs()
    from vislang.models.backbones import override_preprocessing

    return override_preprocessing(_backbone_data_config(kwargs.get("backbone", "tf_efficientnet_lite0")),
                                  kwargs.get("input_size"), kwargs.get("interpolation"))


def build_model(cfg: ExperimentConfig, num_classes: int, input_shape: tuple[int, int, int],
                load_weights: bool = True) -> torch.nn.Module:
    """The configured model; ``load_weights=False`` leaves a pretrained backbone uninitialised (a checkpoint
    or :func:`prepare` fills it), so rebuilding a run never downloads or reads weights."""
    from vislang.models import create_model

    c, h, w = input_shape
    kwargs = cfg.model.kwargs()
    if is_pretrained(cfg) and not load_weights:
        kwargs["load_weights"] = False
    return create_model(cfg.model.name, num_classes=num_classes, in_channels=c, image_size=(h, w), **kwargs)


def check_config(cfg: ExperimentConfig) -> None:
    """Fail fast (before any data is decoded) on an unknown model name or option, or backbone name."""
    from vislang.errors import VislangError
    from vislang.models import MODELS

    MODELS.get(cfg.model.name).check_kwargs(cfg.model.kwargs(), "Model")
    if is_pretrained(cfg):
        from vislang.models.backbones import check_backbone_name, weights_source

        kw = cfg.model.kwargs()
        check_backbone_name(kw.get("backbone", "tf_efficientnet_lite0"))
        weights_source(kw.get("pretrained", "hub"))  # the file / package exists
        frozen = kw.get("freeze", "none") != "none" and kw.get("unfreeze_at_epoch") is None
        cached = cfg.data.feature_cache if kw.get("freeze") == "all" else cfg.data.prefix_cache
        if cfg.model.init_from and frozen and cached:
            which = "feature_cache" if kw.get("freeze") == "all" else "prefix_cache"
            raise VislangError(f"model.init_from with a frozen backbone and data.{which}: the cache holds the "
                               "pretrained backbone's features, not those of the run you start from. Set "
                               f"data.{which}: false, or fine-tune (model.freeze: none).")
    t = cfg.eval.threshold
    if isinstance(t, float) and not 0.0 < t < 1.0:
        raise VislangError(f"eval.threshold={t}: a fixed threshold is a probability strictly between 0 and 1.")


def make_datamodule(cfg: ExperimentConfig) -> Any:
    """The data module: decoded uint8 images, balanced sampling, and a pretrained backbone's preprocessing."""
    from vislang.data.transfer import TransferDataModule

    pre = backbone_preprocess(cfg)
    data = cfg.data
    if pre is not None and data.image_size is None and data.dataset in RESIZE_ON_DECODE:
        data = data.model_copy(update={"image_size": (pre["input_size"][1], pre["input_size"][2])})
    return TransferDataModule(data, cfg.seed, preprocess=pre)


def data_info(dm: Any) -> dict[str, Any]:
    """The facts about the data a trained model needs (written to data.json; predict reads only this)."""
    mean, std = dm.normalization  # the constants actually applied (train statistics, model's, or 0..1 scaling)
    info = {
        "dataset": dm.cfg.dataset,
        "classes": list(dm.classes),
        "class_names": list(dm.class_names),
        "input_shape": list(dm.input_shape),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "split_sizes": {k: int(v) for k, v in dm.split_sizes.items()},
        "class_counts": {k: [int(c) for c in v] for k, v in dm.class_counts.items()},
    }
    if getattr(dm, "preprocess", None):
        info["preprocess"] = dict(dm.preprocess)
    return info


def summary(info: dict[str, Any]) -> str:
    sizes = ", ".join(f"{k} {v:,}" for k, v in info["split_sizes"].items())
    text = f"{len(info['classes'])} classes, images {sizes}"
    if info.get("preprocess"):
        p = info["preprocess"]
        text += f"; {p['backbone']} input {p['input_size'][1]}x{p['input_size'][2]} ({p['interpolation']})"
    return text


def build_task(cfg: ExperimentConfig, info: dict[str, Any]) -> ClassificationTask:
    """The task (model + batch transform + class weights) for a config and a run's ``data.json`` facts."""
    from vislang.data.augment import BatchTransform
    from vislang.data.transfer import TransferTransform

    shape = tuple(info["input_shape"])
    model = build_model(cfg, len(info["classes"]), shape, load_weights=False)
    if info.get("preprocess"):
        transform: torch.nn.Module = TransferTransform(cfg.data.augment, info["preprocess"], channels=shape[0])
    else:
        transform = BatchTransform(cfg.data.augment, info["mean"], info["std"], channels_last=cfg.train.channels_last)
        if cfg.data.augment.crop_size:
            check_crop_size(model, transform, cfg, shape)
    weights = class_weights_tensor(cfg.train.class_weights, list(info["classes"]), info["class_counts"]["train"])
    return ImageClassificationTask(model, cfg, len(info["classes"]), transform=transform, class_weights=weights)


def check_crop_size(model: torch.nn.Module, transform: Any, cfg: ExperimentConfig, shape: tuple[int, ...]) -> None:
    """data.augment.crop_size trains on windows smaller than the images that evaluation shows: only a model
    that pools globally takes both. Cut the crops of a tiny batch with the run's own transform and feed them
    to the model now, for a clear error instead of a failure inside the first training step."""
    from vislang.errors import VislangError

    size = cfg.data.augment.crop_size
    try:
        with torch.random.fork_rng():  # the check draws no numbers from the run's seeded stream
            crops = transform.geometric(torch.zeros(2, *shape, dtype=torch.uint8))
    except ValueError as e:  # a crop larger than the images
        raise VislangError(f"{e}.") from None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(crops.float())
    except RuntimeError as e:
        raise VislangError(
            f"model {cfg.model.name!r} cannot train on data.augment.crop_size={size} windows of "
            f"{shape[1]}x{shape[2]} images: it needs whole images ({str(e).splitlines()[0]}). Use a model that "
            "pools globally (fastnet, resnet, cnn or vgg with model.global_pool: true) or set "
            "data.augment.crop_size to 0.") from None
    finally:
        model.train(was_training)


def prepare(task: ClassificationTask, dm: Any) -> None:
    """Data-dependent initialisation of a new run: pretrained weights (and the frozen-feature cache), or
    fastnet's PCA-whitened stem from a seeded sample."""
    if hasattr(task.model, "load_pretrained"):
        _pretrained_and_cache(task, dm)
    if hasattr(task.model, "init_whitening"):
        sample = dm.images["train"][torch.randperm(len(dm.images["train"]))[:5000]]
        with torch.no_grad():
            task.model.init_whitening(task.transform(sample, train=False))


def prepare_resumed(task: ClassificationTask, dm: Any) -> None:
    """A resumed run: its checkpoint restores every weight, but a frozen backbone's cached features (or frozen
    prefix's grids) must be served again, or the resumed epochs would run the frozen part on every image, as
    slow as training without the cache. They come from the cache (nothing is recomputed); the pretrained weights
    loaded for a cache miss are the frozen part's own, and the checkpoint then overwrites the rest."""
    if hasattr(task.model, "load_pretrained"):
        _pretrained_and_cache(task, dm)


def _pretrained_and_cache(task: ClassificationTask, dm: Any) -> None:
    """Load the pretrained backbone and, when the backbone (or a prefix of it) stays frozen and the config caches
    it, make ``dm`` serve its cached features."""
    cfg = task.cfg
    # a frozen backbone is in eval mode on purpose (its batch-norm statistics stay as pretrained)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    task.model.load_pretrained()
    fixed = task.model.unfreeze_at_epoch is None
    frozen = task.model.frozen_all and fixed
    prefix = fixed and cfg.data.prefix_cache and task.model.freeze_spec not in ("all", "none")
    if prefix and task.model.prefix_split() is None:
        log.warning("data.prefix_cache: off, training on images. The backbone %s is not a plain chain of "
                    "modules that model.freeze: %s ends a link of (name a stage such as blocks.5 or layer3), "
                    "or a model.feature_layers module spans the cut.",
                    task.model.data_cfg.get("backbone"), task.model.freeze_spec)
        prefix = False
    if (frozen and cfg.data.feature_cache) or prefix:
        from vislang.data.transfer import attach_features
        from vislang.run import resolve_accelerator, resolve_precision

        accelerator = resolve_accelerator(cfg)
        attach_features(task.model, dm, tta_flip=cfg.eval.tta_flip, seed=cfg.seed, progress=dm.progress,
                        splits=["train", "val", cfg.eval.split],  # the splits this run scores
                        device=accelerator, precision=resolve_precision(cfg, accelerator), prefix=prefix)
    elif (cfg.data.feature_cache and task.model.frozen_all) or (cfg.data.prefix_cache and not fixed):
        log.info("feature cache off: the backbone unfreezes at epoch %s", task.model.unfreeze_at_epoch)


def evaluate_run(run_dir: Path, splits: list[str] | None = None, checkpoint: str = "best",
                 dm: Any = None, light: bool = False) -> dict[str, Any]:
    """Score the run on ``splits`` (metrics.json, predictions, plots) and print a per-class report
    (``light``: metrics and predictions only)."""
    from vislang.evaluate import evaluate_run as _evaluate

    metrics = _evaluate(run_dir, splits, checkpoint=checkpoint, dm=dm, light=light)
    for split in dict.fromkeys([] if light else splits or []):
        if split in metrics and len(metrics[split].get("per_class", [])) <= 40:
            print_per_class(metrics[split], split)
    return metrics


def print_per_class(m: dict[str, Any], split: str) -> None:
    """Precision / recall / F1 / support per class, as a table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    title = f"{split}: per class" + (f" (threshold {m['threshold']:.3f})" if m.get("threshold") is not None else "")
    table = Table(title=title)
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for row in m["per_class"]:
        table.add_row(str(row["class"]), f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                      str(row["support"]))
    table.add_row("macro", f"{m['precision_macro']:.3f}", f"{m['recall_macro']:.3f}", f"{m['f1_macro']:.3f}",
                  str(m["n"]))
    Console().print(table)


def predict_cli(run_dir: Path, inputs: list[Path], *, texts: list[str], top_k: int, beam: int, console: Any) -> None:
    """``vislang predict RUN IMAGE...``: the top-k classes with probabilities for each image (and, for
    binary runs with a tuned threshold, the decision at that threshold)."""
    from vislang.errors import VislangError
    from vislang.evaluate import predict_files, run_threshold

    if texts:
        raise VislangError(f"{run_dir} is an image classifier: give image files, not --text.")
    if not inputs:
        raise VislangError("Give one or more image files: vislang predict RUN img1.jpg img2.png")
    from vislang.run import read_json

    threshold = run_threshold(Path(run_dir))
    names = read_json(Path(run_dir) / "data.json")["class_names"]
    for path, top in zip(inputs, predict_files(run_dir, inputs, top_k)):
        console.print(f"[bold]{path}[/]")
        for name, p in top:
            console.print(f"  {p:7.2%}  {name}")
        if threshold is not None and len(names) == 2:
            probs = dict(top)
            p1 = probs.get(names[1], 1.0 - probs.get(names[0], 0.0))
            console.print(f"  decision at threshold {threshold:.3f} on p({names[1]}): "
                          f"[bold]{names[1] if p1 >= threshold else names[0]}[/]")
