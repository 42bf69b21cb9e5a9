"""The experiment file: pydantic models holding every default, loading, merging and ``--set`` overrides.

An experiment is one YAML file with ``task``, ``data``, ``model``, ``train`` and ``eval`` sections.
Every default lives here and is written into the run's ``config.yaml``, so a run can be
re-created from that file alone. Unknown keys are errors naming the key, the file and the
closest valid key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vislang.errors import VislangError, did_you_mean


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(Section):
    """Batched augmentation applied to whole batches as tensors on the training device."""

    crop_padding: int = Field(0, ge=0, description="random crop after zero padding by this many pixels; 0 = off")
    translate: int = Field(0, ge=0, description="random translation by up to this many pixels (reflect padding); 0 = off")
    flip: bool = Field(False, description="random horizontal flip with probability 0.5")
    flip_mode: Literal["random", "alternate"] = Field("random", description="flip: random = each image is mirrored with probability 0.5 in every epoch; alternate = each image gets a fixed random side in even epochs and the other side in odd ones, so every two epochs show it both ways (airbench's alternating flip)")
    cutout: int = Field(0, ge=0, description="side in pixels of one random square set to zero; 0 = off")
    crop_size: int = Field(0, ge=0, description="train on a random crop_size x crop_size window of each image (after crop_padding / translate); evaluation sees whole images. A cheaper epoch for nets that pool globally (fastnet, resnet, cnn or vgg with global_pool); 0 = off")
    crop_epochs: int | None = Field(None, ge=1, description="crop_size applies to the first crop_epochs epochs only, then training sees whole images, the size evaluation sees (progressive resizing); null = every epoch")
    rotate: float = Field(0.0, ge=0.0, le=180.0, description="random rotation by up to this many degrees either way (reflect padding); 0 = off")
    scale: float = Field(0.0, ge=0.0, lt=1.0, description="random zoom by a factor in [1 - scale, 1 + scale]; 0 = off")
    brightness: float = Field(0.0, ge=0.0, le=1.0, description="random brightness shift by up to this fraction of the pixel range; 0 = off")
    contrast: float = Field(0.0, ge=0.0, lt=1.0, description="random contrast factor in [1 - contrast, 1 + contrast] about each image's mean; 0 = off")

    @property
    def alternating_flip(self) -> bool:
        """flip with flip_mode alternate: the training loader mirrors (AlternatingFlipDataset), not the batch transform."""
        return self.flip and self.flip_mode == "alternate"

    @property
    def random_views(self) -> bool:
        """Whether the ops that a cached feature view can hold draw anything at random (flip is a view of
        its own; cutout is not applied to cached views)."""
        return bool(self.crop_padding or self.translate or self.crop_size or self.rotate or self.scale
                    or self.brightness or self.contrast)


def check_folds(cv_folds: int | None, cv_fold: int | None) -> None:
    """The rule for ``data.cv_folds`` / ``data.cv_fold`` (image and caption data): both or neither, fold in range."""
    if (cv_folds is None) != (cv_fold is None):
        raise ValueError("cv_folds and cv_fold go together: set both (or neither)")
    if cv_folds is not None and cv_fold >= cv_folds:
        raise ValueError(f"cv_fold must be below cv_folds ({cv_folds})")


class DataConfig(Section):
    dataset: str = Field("cifar10", description="registered dataset name (vislang data list)")
    path: str | None = Field(None, description="file or folder for path-based datasets (image_folder, image_csv, npz); relative to the config file")
    options: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments of the dataset entry")
    image_size: int | tuple[int, int] | None = Field(None, description="resize to this size when decoding (int or [h, w]); null keeps the dataset's own size")
    channels: Literal[1, 3] = Field(3, description="1 = grayscale, 3 = RGB; images are converted when decoded")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="validation fraction carved (stratified, seeded) from train when the dataset has no val split")
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of the labelled images carved (stratified, seeded) from train as a test split when the dataset has none (image folders); 0 = none")
    subset: dict[str, int] = Field(default_factory=dict, description="cap per split, e.g. {train: 5000, test: 1000}; stratified and seeded")
    skip_corrupt: bool = Field(False, description="skip unreadable images (counted in the log) instead of stopping")
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    normalize: Literal["dataset", "none"] = Field("dataset", description="standardise with the train split's per-channel mean/std (pretrained backbones always use their own mean/std)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    sampler: Literal["shuffle", "balanced"] = Field("shuffle", description="training order: shuffle = a permutation per epoch; balanced = draw with replacement, each class equally likely (imbalanced data)")
    feature_cache: bool = Field(True, description="frozen pretrained backbone (model.freeze: all): compute its features once per image, cache them on disk and train only the head")
    prefix_cache: bool = Field(False, description="backbone frozen up to a module (model.freeze: blocks.5, layer3): compute the frozen part's output grid once per image and view (data.feature_views), cache it on disk and run only the trainable rest each step; random augmentation is then limited to the cached views, as with the feature cache")
    feature_views: int = Field(1, ge=1, description="feature cache: views cached per training image: the image, then its mirror (augment.flip), then random augmentations from data.augment; each epoch picks one per image")
    cv_folds: int | None = Field(None, ge=2, description="k-fold cross-validation: number of stratified, seeded folds of the train split (vislang cv sets it)")
    cv_fold: int | None = Field(None, ge=0, description="the fold (0 .. cv_folds-1) used as validation; the test split is untouched")

    @model_validator(mode="after")
    def _cv(self) -> DataConfig:
        check_folds(self.cv_folds, self.cv_fold)
        return self

    @field_validator("subset", mode="before")
    @classmethod
    def _subset_none(cls, v: Any) -> Any:
        return {} if v is None else v  # `--set data.subset=null` drops a recipe's subset: every split whole

    @field_validator("subset")
    @classmethod
    def _subset(cls, v: dict[str, int]) -> dict[str, int]:
        for split, n in v.items():
            if n < 1:
                raise ValueError(f"subset.{split} must be at least 1 (leave the split out to keep it whole)")
        return v

    @field_validator("image_size")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            if len(v) != 2 or min(v) < 1:
                raise ValueError("image_size must be an int or [height, width] of positive ints")
            return (int(v[0]), int(v[1]))
        if v is not None and v < 1:
            raise ValueError("image_size must be positive")
        return v


class ModelConfig(BaseModel):
    """``name`` picks a registered model; every other key is that model's keyword argument."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str = Field("cnn", description="registered model name (vislang models list)")
    init_from: str | None = Field(None, description="start from the weights of an earlier run (its directory: best checkpoint, or a .ckpt file), e.g. the frozen-backbone run before fine-tuning; tensors whose shape differs (a new head) keep their fresh initialisation")

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class EarlyStopConfig(Section):
    monitor: str | None = Field(None, description="metric to watch, e.g. val/loss or val/acc; null = no early stopping")
    patience: int = Field(5, ge=1)
    mode: Literal["min", "max", "auto"] = "auto"


class EmaConfig(Section):
    decay: float = Field(0.0, ge=0.0, lt=1.0, description="exponential moving average of weights used for evaluation; 0 = off")
    every: int = Field(5, ge=1, description="update the average every this many steps")
    lookahead: bool = Field(False, description="copy the average back into the model at every update and at each epoch's end (airbench / hlb-cifar10's lookahead): training continues from the averaged weights; false = the average is only swapped in for evaluation")
    ramp_power: float = Field(0.0, ge=0.0, description="lookahead: decay grows over training as decay * (step / total_steps) ** ramp_power (airbench: 3), so it moves fast early and averages strongly at the end; 0 = constant decay")
    start_epoch: int = Field(0, ge=0, description="lookahead: first epoch that averages")

    @model_validator(mode="after")
    def _lookahead_needs_decay(self) -> EmaConfig:
        if self.lookahead and self.decay <= 0:
            raise ValueError("lookahead averages with train.ema.decay: set a decay in (0, 1), e.g. 0.77 (airbench)")
        return self


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0, description="peak learning rate")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["none", "onecycle", "cosine", "step", "plateau"] = "onecycle"
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up length in epochs (cosine, step, none); onecycle uses pct_start")
    pct_start: float = Field(0.25, gt=0, lt=1, description="onecycle: fraction of steps spent rising to lr")
    div_factor: float = Field(25.0, ge=1, description="onecycle: starts at lr / div_factor (PyTorch OneCycleLR's name)")
    final_div_factor: float = Field(1000.0, ge=1, description="onecycle: ends at lr / (div_factor * final_div_factor)")
    step_size: int = Field(30, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.1, gt=0, le=1, description="step/plateau: decay factor")
    plateau_patience: int = Field(3, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0, description="clip gradient norm to this value")
    precision: Literal["auto", "32", "16-mixed", "bf16-mixed"] = Field("auto", description="auto = bf16/16-mixed on CUDA, bf16-mixed on CPUs with native bf16 (AMX/AVX512-BF16), else 32")
    accelerator: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    devices: int = Field(1, ge=1, description="data-parallel devices (DDP when > 1)")
    channels_last: bool = True
    threads: int | None = Field(None, ge=1, description="CPU threads for torch; null = all cores")
    early_stopping: EarlyStopConfig = Field(default_factory=EarlyStopConfig)
    checkpoint_monitor: str | None = Field(None, description="metric that picks the best checkpoint; null = the task's own (val/acc for classification)")
    ema: EmaConfig = Field(default_factory=EmaConfig)
    class_weights: Literal["auto"] | list[float] | dict[str, float] | None = Field(None, description="loss weight per class: auto = inverse class frequency (n / (classes * count)); a list (class order) or a {class: weight} map; null = equal")
    bias_lr_mult: float = Field(1.0, gt=0, description="learning rate of normalisation-layer parameters (BatchNorm / LayerNorm / GroupNorm shifts and scales) as a multiple of lr (airbench uses 64 with frozen BN scales); when not 1 they also get weight decay, scaled so that each step decays them by the same fraction as the weights")
    backbone_lr_mult: float = Field(1.0, gt=0, description="learning rate of a pretrained backbone's parameters as a fraction of lr (discriminative learning rates; e.g. 0.1); the head uses lr")


class EvalConfig(Section):
    split: str = Field("test", description="split evaluated at the end of training")
    tta_flip: bool = Field(False, description="average predictions over the image and its mirror")
    tta_translate: int = Field(0, ge=0, description="also average over copies shifted by this many pixels (up-left and down-right, reflect padding); 0 = off")
    top_k: int = Field(5, ge=1)
    checkpoint: Literal["best", "last"] = "best"
    threshold: Literal["f1", "youden"] | float | None = Field(None, description="binary tasks: decision threshold on the positive class's probability: f1 / youden = tuned on the val split (saved in the run, used by test metrics and predict), a number = fixed; null = argmax")


class BaseExperiment(Section):
    """What every task's experiment file has; each task subclasses it with its own ``data``/``eval``
    sections (and may narrow ``task``, ``model`` and ``train``). ``task`` picks the subclass."""

    name: str = Field("experiment", description="run name; the run goes to <output_dir>/<name>")
    task: str = "image_classification"
    seed: int = 0
    output_dir: str = "runs"
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sweep: dict[str, Any] | None = Field(None, description="search space and objective of `vislang sweep` (validated by vislang.tune.sweep); ignored by train")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ExperimentConfig(BaseExperiment):
    """An image-classification experiment."""

    task: Literal["image_classification"] = "image_classification"
    data: DataConfig = Field(default_factory=DataConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


# task name -> "module:ConfigClass"; imported lazily so loading an image config never imports text code
TASK_CONFIGS = {
    "image_classification": "vislang.config:ExperimentConfig",
    "text_classification": "vislang.tasks.text:TextExperimentConfig",
    "captioning": "vislang.tasks.captioning:CaptionExperimentConfig",
}


def config_class(task: str, source: str = "<config>") -> type[BaseExperiment]:
    """The experiment model of ``task`` (an error naming the closest task when it is unknown)."""
    import importlib

    if task not in TASK_CONFIGS:
        raise VislangError(f"Invalid config {source}: unknown task '{task}'.{did_you_mean(str(task), TASK_CONFIGS)} "
                           f"Tasks: {', '.join(TASK_CONFIGS)}.")
    module, cls = TASK_CONFIGS[task].split(":")
    return getattr(importlib.import_module(module), cls)


# ---------------------------------------------------------------------------------------------
# loading and overrides


def _parse_value(text: str) -> Any:
    """``--set`` values are YAML scalars/lists: 0.1 → float, true → bool, [1,2] → list."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` assignment to a raw config dict in place."""
    if "=" not in assignment:
        raise VislangError(f"--set '{assignment}' must look like key.path=value, e.g. train.lr=0.01")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise VislangError(f"--set {key}: '{part}' is a value, not a section")
        node = nxt
    node[parts[-1]] = _parse_value(value)


def _section_fields(path: tuple[Any, ...], root: type[BaseModel]) -> list[str]:
    """Valid field names at a location of the config, for 'did you mean' hints."""
    model: Any = root
    for part in path:
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if model is None:
            return []
    return list(model.model_fields)


def _explain(err: ValidationError, source: str, root: type[BaseModel]) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            hint = did_you_mean(str(loc[-1]), _section_fields(loc[:-1], root))
            valid = ", ".join(_section_fields(loc[:-1], root))
            lines.append(f"unknown key '{key}'.{hint} Valid keys here: {valid}.")
        else:
            lines.append(f"'{key}': {e['msg']} (got {e.get('input')!r}).")
    return f"Invalid config {source}:\n  " + "\n  ".join(lines)


def build_config(raw: dict[str, Any], source: str = "<config>") -> Any:
    """Validate a raw config dict against the experiment model of its ``task``."""
    cls = config_class(raw.get("task", "image_classification"), source)
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        raise VislangError(_explain(err, source, cls)) from None


def _resolve_paths(section: Any, base: Path) -> None:
    """Make relative file keys of the data section (``path``, ``*_path``, at any depth) relative to the
    config file's folder, unless they name something that exists from the working directory."""
    if not isinstance(section, dict):
        return
    for key, value in section.items():
        if isinstance(value, dict):
            _resolve_paths(value, base)
        elif (key == "path" or key.endswith("_path")) and isinstance(value, str) and value \
                and "://" not in value and not Path(value).is_absolute():
            resolved = (base / value).resolve()
            if resolved.exists() or not Path(value).exists():
                section[key] = str(resolved)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Any:
    """Read a YAML experiment file (or start from defaults when ``path`` is None) and apply overrides.

    A relative ``data.path`` is resolved against the config file's folder.
    """
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise VislangError(f"Config file {p} does not exist. Give the path of a YAML experiment file.")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise VislangError(f"Config file {p} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise VislangError(f"Config file {p} must hold a mapping of sections (task, data, model, train, eval).")
        _resolve_paths(raw.get("data"), p.parent)
    raw = copy.deepcopy(raw)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    return build_config(raw, source)


def save_config(cfg: BaseExperiment, path: Path) -> None:
    from vislang.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
