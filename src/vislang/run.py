"""Training an experiment into a run directory, and rebuilding a trained model from one.

A run directory holds everything later commands need, so nothing after training reaches
back into training code::

    runs/<name>/config.yaml      the fully resolved config (re-creates the run)
                data.json        classes, input shape, normalisation, split sizes and class counts
                run.json         status, device, times, parameter count
                history.csv      one row per epoch
                checkpoints/     best.ckpt, last.ckpt
                metrics.json     final metrics per evaluated split
                predictions_<split>.csv, plots/*.png
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, EMAWeightAveraging, ModelCheckpoint

from vislang.callbacks import HistoryWriter, Lookahead, ThroughputBar
from vislang.config import ExperimentConfig, load_config, save_config
from vislang.errors import VislangError
from vislang.io import atomic_write_json
from vislang.system import tune_malloc
from vislang.tasks.classification import metric_mode

RUN_DIR_ENV = "VISLANG_RUN_DIR"


def is_ddp_worker() -> bool:
    """True in the extra processes Lightning launches for ``--devices N`` (they report nothing)."""
    return int(os.environ.get("LOCAL_RANK", 0)) > 0 or int(os.environ.get("NODE_RANK", 0)) > 0


def unique_run_dir(output_dir: str | Path, name: str) -> Path:
    """``output_dir/name``, or ``name-2``, ``name-3`` ... when that run already exists (never overwrite)."""
    base = Path(output_dir) / name
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{name}-{i}")
    return path


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise VislangError(f"{path} is missing: is {path.parent} a vislang run directory?") from None
    except json.JSONDecodeError as err:
        raise VislangError(f"{path} is not valid JSON ({err}); the run directory is damaged.") from None


def cpu_has_native_bf16() -> bool:
    """True on CPUs whose oneDNN kernels run bf16 natively (AVX512-BF16 / AMX), where bf16 autocast
    with channels_last trains convnets 2-3x faster than fp32 (benchmarks/model_speed.py)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def auto_precision(accelerator: str) -> str:
    """The Lightning precision 'auto' means on a device type: mixed bf16/fp16 on CUDA, bf16 on capable
    CPUs, else fp32. Training, evaluation and the frozen-feature passes all resolve 'auto' here."""
    if accelerator == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator == "cpu" and cpu_has_native_bf16():
        return "bf16-mixed"
    return "32-true"


def resolve_precision(cfg: ExperimentConfig, accelerator: str) -> str:
    """The Lightning precision of a run: ``train.precision``, with 'auto' resolved by :func:`auto_precision`."""
    return auto_precision(accelerator) if cfg.train.precision == "auto" else cfg.train.precision


def inference_autocast(cfg: Any, device: torch.device) -> Any:
    """The autocast context of the run's training precision on ``device``, for evaluation and predict: a
    model is scored in the precision it was trained and validated in (as Lightning's own loops do), so a
    run's final metrics agree with its last validation and a frozen run scores the same with or without
    the feature cache (whose features are computed in that precision)."""
    from vislang.data.features import autocast_context

    return autocast_context(resolve_precision(cfg, device.type) if cfg is not None else "32", device)


def resolve_accelerator(cfg: ExperimentConfig) -> str:
    """The device type a run trains on: ``train.accelerator``, with ``auto`` = CUDA, then MPS, then the
    CPU. The one-off frozen-feature passes use it too: on a GPU machine they must not fall back to the CPU."""
    acc = cfg.train.accelerator
    if acc == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if acc == "cuda" and not torch.cuda.is_available():
        raise VislangError("train.accelerator is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'.")
    return acc


def _spec(cfg: Any) -> Any:
    from vislang.tasks import task_spec

    return task_spec(cfg.task)


def build_task(cfg: Any, info: dict[str, Any]) -> L.LightningModule:
    """The task's LightningModule for a config and a run's ``data.json`` facts."""
    return _spec(cfg).build_task(cfg, info)


def check_model_config(cfg: Any) -> None:
    """Fail fast (before any data is read) on an unknown model name or option."""
    _spec(cfg).check_config(cfg)


def build_model(cfg: ExperimentConfig, num_classes: int, input_shape: tuple[int, int, int]) -> torch.nn.Module:
    """An image classifier for ``cfg`` (kept here for scripts; the task module owns it)."""
    from vislang.tasks.image import build_model as _build

    return _build(cfg, num_classes, input_shape)


def _callbacks(cfg: Any, run_dir: Path, has_val: bool, quiet: bool) -> list[L.Callback]:
    t = cfg.train
    monitor = (t.checkpoint_monitor or _spec(cfg).default_monitor) if has_val else "train/loss"
    callbacks: list[L.Callback] = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=monitor,
                        mode=metric_mode(monitor), save_last=False, save_top_k=1, auto_insert_metric_name=False,
                        enable_version_counter=False,
                        # at train-epoch end (after validation, after HistoryWriter): checkpoint and
                        # history always describe the same epochs
                        save_on_train_epoch_end=True),
        # last.ckpt after every epoch (Lightning's save_last writes it only when `best` improved)
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                        enable_version_counter=False, save_on_train_epoch_end=True),
        HistoryWriter(run_dir / "history.csv"),
    ]
    if not quiet:
        callbacks.append(ThroughputBar(unit={"text_classification": "sent/s"}.get(cfg.task, "img/s")))
    es = t.early_stopping
    if es.monitor:
        mode = metric_mode(es.monitor) if es.mode == "auto" else es.mode
        callbacks.append(EarlyStopping(monitor=es.monitor, patience=es.patience, mode=mode))
    if t.ema.decay > 0 and t.ema.lookahead:
        callbacks.append(Lookahead(t.ema.decay, t.ema.every, t.ema.ramp_power, t.ema.start_epoch))
    elif t.ema.decay > 0:
        callbacks.append(EMAWeightAveraging(decay=t.ema.decay, update_every_n_steps=t.ema.every))
    return callbacks


def _quiet_lightning() -> None:
    """Keep the terminal for what matters: Lightning's device banner and tips, and warnings about
    hooks we override on purpose (batch transfer), say nothing a vislang user can act on."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*overridden `on_after_batch_transfer`.*")
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def train(cfg: Any, *, resume: Path | None = None, quiet: bool = False,
          callbacks: list[L.Callback] | None = None, light: bool = False) -> Path:
    """Train ``cfg`` into a new run directory (or continue ``resume``), evaluate it, return the run path.

    ``callbacks`` are added to the run's own (e.g. the sweep's pruning callback). ``light``: evaluate
    to numbers only, with no plots, explanations or HTML report (sweep trials: the sweep report covers
    them, and on a small trial drawing them costs more than training; ``vislang evaluate RUN`` draws the
    plots later)."""
    spec = _spec(cfg)
    spec.check_config(cfg)
    _quiet_lightning()
    malloc = tune_malloc()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if resume is not None:
        run_dir = Path(resume)
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise VislangError(
                f"Cannot resume {run_dir}: {ckpt} does not exist (the run stopped before finishing its first "
                "epoch). Start it again with: vislang train " + str(run_dir / "config.yaml")
            )
    elif is_ddp_worker():
        # Lightning re-ran this command for rank > 0: use the run directory rank 0 exported
        run_dir, ckpt = Path(os.environ[RUN_DIR_ENV]), None
    else:
        run_dir, ckpt = unique_run_dir(cfg.output_dir, cfg.name), None
    worker = is_ddp_worker()

    dm = spec.make_datamodule(cfg)
    dm.setup("fit")
    info = spec.data_info(dm)
    has_val = dm.split_sizes.get("val", 0) > 0
    task = spec.build_task(cfg, info)
    init = None
    if resume is None:
        spec.prepare(task, dm)
        if cfg.model.init_from:
            init = init_weights_from(task, cfg.model.init_from)
    elif hasattr(spec, "prepare_resumed"):
        spec.prepare_resumed(task, dm)  # the checkpoint holds the weights; a feature cache is served again

    run_dir.mkdir(parents=True, exist_ok=True)
    if resume is None and not worker:
        save_config(cfg, run_dir / "config.yaml")
        atomic_write_json(run_dir / "data.json", info)
    accelerator = resolve_accelerator(cfg)
    precision = resolve_precision(cfg, accelerator)
    n_params = sum(p.numel() for p in task.model.parameters())
    status: dict[str, Any] = {
        "name": run_dir.name, "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "accelerator": accelerator, "precision": precision, "devices": cfg.train.devices, "torch": torch.__version__,
        "host": platform.node(), "cpu_threads": torch.get_num_threads(), "malloc": malloc, "params": n_params,
    }
    if init is not None:
        status["init_from"] = init
    if not worker:
        atomic_write_json(run_dir / "run.json", status)
    if not quiet:
        print(f"{run_dir}: {cfg.model.name} ({n_params / 1e6:.2f}M parameters) on {accelerator} "
              f"({torch.get_num_threads()} threads, {precision}), {spec.summary(info)}", flush=True)
        if init is not None:
            fresh = init["fresh"]
            print(f"weights from {init['checkpoint']}: {init['loaded']} tensors copied" + (
                f"; {len(fresh)} keep their fresh initialisation: {', '.join(fresh[:6])}"
                + (" ..." if len(fresh) > 6 else "") if fresh else ""), flush=True)

    trainer = L.Trainer(
        max_epochs=getattr(spec, "max_epochs", lambda c: c.train.epochs)(cfg),  # captioning: + SCST epochs
        accelerator=accelerator,
        devices=cfg.train.devices,
        strategy="ddp" if cfg.train.devices > 1 else "auto",
        precision=precision,
        gradient_clip_val=cfg.train.grad_clip,
        callbacks=_callbacks(cfg, run_dir, has_val, quiet) + list(callbacks or []),
        logger=False,
        default_root_dir=run_dir,
        # CUDA needs deterministic kernels for same-seed-same-result; on the CPU the kernels used here
        # already are, and torch's deterministic mode slows batched indexing (augmentation) by ~25%.
        deterministic="warn" if accelerator == "cuda" else False,
        num_sanity_val_steps=0,
        enable_model_summary=not quiet,
        enable_progress_bar=not quiet,
        limit_val_batches=1.0 if has_val else 0,
    )
    t0 = time.perf_counter()
    os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by DDP workers that Lightning launches
    try:
        trainer.fit(task, datamodule=dm, ckpt_path=ckpt)
    finally:
        if not worker:
            os.environ.pop(RUN_DIR_ENV, None)
    train_time = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return run_dir
    status.update(status="trained", train_time_s=round(train_time, 2), epochs_done=trainer.current_epoch,
                   finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_json(run_dir / "run.json", status)
    spec.evaluate_run(run_dir, splits=["val", cfg.eval.split] if has_val else [cfg.eval.split],
                      checkpoint=cfg.eval.checkpoint, dm=dm, light=light)
    status["status"] = "finished"
    atomic_write_json(run_dir / "run.json", status)
    from vislang.report.html import write_report_safely

    if not light:
        write_report_safely(run_dir)  # a report failure only warns: the trained run is complete
    return run_dir


def init_weights_from(task: L.LightningModule, source: str | Path) -> dict[str, Any]:
    """Copy an earlier run's weights (``source``: its directory, whose best or last checkpoint is used, or a
    ``.ckpt`` file) into a new run's task. Tensors are matched by name and shape; the rest (a head for
    other classes, a layer that changed) keep their fresh initialisation and are listed in the result."""
    path = Path(source).expanduser()
    ckpt = path
    if path.is_dir():
        ckpt = next((p for p in (path / "checkpoints" / "best.ckpt", path / "checkpoints" / "last.ckpt") if p.is_file()),
                    path / "checkpoints" / "best.ckpt")
    if not ckpt.is_file():
        raise VislangError(f"model.init_from: {ckpt} does not exist. Give a finished run directory (runs/NAME, "
                           "trained first) or a .ckpt file.")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file fails in many ways
        raise VislangError(f"model.init_from: {ckpt} is not a readable vislang checkpoint ({type(err).__name__}: "
                           f"{err}).") from None
    own = task.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not loaded:
        raise VislangError(f"model.init_from: no tensor of {ckpt} fits this model (different architecture?); "
                           "init_from needs the same model with at most a changed head.")
    task.load_state_dict(loaded, strict=False)
    fresh = sorted(k for k in own if k not in loaded)
    return {"checkpoint": str(ckpt), "loaded": len(loaded), "fresh": fresh}


def load_run(run_dir: Path, checkpoint: str | None = "best", device: str | None = "cpu") -> tuple[Any, dict[str, Any], L.LightningModule]:
    """Config, data facts and the trained task (in eval mode) of a run directory, on ``device``: the CPU by
    default, or with ``None`` the device the run's config trains on (``train.accelerator``; ``auto`` = CUDA,
    then MPS, then the CPU), so that scoring a split on a GPU machine does not fall back to the CPU.
    ``checkpoint``: best, last, or None = the one the run is evaluated with (``eval.checkpoint``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VislangError(f"Run directory {run_dir} does not exist.")
    cfg = load_config(run_dir / "config.yaml")
    checkpoint = checkpoint or cfg.eval.checkpoint
    info = read_json(run_dir / "data.json")
    ckpt = run_dir / "checkpoints" / f"{checkpoint}.ckpt"
    if not ckpt.is_file():
        alt = run_dir / "checkpoints" / "last.ckpt"
        if checkpoint == "best" and alt.is_file():
            ckpt = alt
        else:
            raise VislangError(f"{ckpt} does not exist: the run has no {checkpoint} checkpoint yet.")
    task = build_task(cfg, info)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    task.load_state_dict(state["state_dict"])
    task.eval()
    if device is None:
        device = resolve_accelerator(cfg)
    return cfg, info, task.to(device)
