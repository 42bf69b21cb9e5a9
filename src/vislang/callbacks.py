"""Lightning callbacks of a run: per-epoch history file and a progress bar showing images/s."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from vislang.io import atomic_write_text


def read_history(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in rows]


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


class EpochThroughput(Callback):
    """Counts training images and time within the current epoch; ``rate`` is training images/s.

    Time runs from the epoch's start to its last training batch, so the validation loop (which
    Lightning runs before ``on_train_epoch_end``) is not counted. Cooperative (calls ``super()``),
    so it mixes into other callbacks such as the progress bar.
    """

    _t0 = _t_last = 0.0
    _seen = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._t0 = self._t_last = time.perf_counter()
        self._seen = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._seen += len(batch[-1])
        self._t_last = time.perf_counter()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    @property
    def elapsed(self) -> float:
        return self._t_last - self._t0

    @property
    def rate(self) -> float | None:
        return self._seen / self.elapsed if self._seen and self.elapsed > 0 else None


class HistoryWriter(EpochThroughput):
    """Writes ``history.csv`` (one row per epoch: train/val loss and metrics, lr, time, images/s).

    The file is rewritten atomically after every epoch. The rows are also part of the callback's
    checkpoint state (Lightning saves checkpoints after the other callbacks' epoch-end hooks), so a
    resumed run continues exactly the history of the checkpoint it resumes from, even if it was
    killed between writing the checkpoint and writing the file.
    """

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self._resumed = False

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # called when resuming, before on_fit_start (the loop's epoch counter is restored later)
        self.rows = list(state_dict.get("rows", []))
        self._resumed = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._resumed:
            self.rows = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs after validation in Lightning 2.x, so callback_metrics hold both train and val figures.
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        row: dict[str, Any] = {"epoch": trainer.current_epoch}
        for key, value in sorted(trainer.callback_metrics.items()):
            if key.endswith("_step"):
                continue
            row[key.removesuffix("_epoch")] = round(float(value), 6)
        row["lr"] = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        row["epoch_time_s"] = round(self.elapsed, 3)
        row["images_per_s"] = round(self.rate, 1) if self.rate else None
        self.rows.append(row)
        write_history(self.path, self.rows)


class ThroughputBar(EpochThroughput, TQDMProgressBar):
    """Lightning's tqdm bar (rate and ETA) plus the training throughput in examples per second
    (``unit``: img/s for images, sent/s for texts)."""

    def __init__(self, unit: str = "img/s") -> None:
        super().__init__(refresh_rate=5)
        self.unit = unit

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        # the running training loss of this epoch (the classification tasks log theirs once per epoch)
        train_loss = getattr(pl_module, "train_loss", None)
        running = train_loss.running() if trainer.training and hasattr(train_loss, "running") else None
        if running is not None:
            items["loss"] = f"{running:.4g}"
        if self.rate:
            items[self.unit] = f"{self.rate:.0f}"
        return items


class Lookahead(Callback):
    """Weight averaging that training continues from (airbench's / hlb-cifar10's "lookahead").

    Every ``every`` optimiser steps from epoch ``start_epoch`` on, the average moves toward the
    weights, ``avg = rho * avg + (1 - rho) * w`` with ``rho = decay * (step / total) ** ramp_power``,
    and is copied back into the model; at the end of each epoch (before validation and the
    checkpoint) the model takes the average. Unlike Lightning's ``EMAWeightAveraging``, which only
    swaps an average in for evaluation, this changes the training trajectory; Lightning has no such
    callback, hence this one. Batch-norm running statistics are averaged too, as airbench does.
    """

    def __init__(self, decay: float, every: int = 5, ramp_power: float = 0.0, start_epoch: int = 0) -> None:
        self.decay, self.every, self.ramp_power, self.start_epoch = decay, every, ramp_power, start_epoch
        self.average: list[Any] | None = None

    @staticmethod
    def _tensors(pl_module: L.LightningModule) -> list[Any]:
        module = getattr(pl_module, "model", pl_module)
        return [t for t in module.state_dict(keep_vars=False).values() if t.is_floating_point()]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.average is not None:  # restored from a checkpoint: onto the device training runs on
            self.average = [a.to(pl_module.device) for a in self.average]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if trainer.current_epoch >= self.start_epoch and step % self.every == 0:
            tensors = self._tensors(pl_module)
            if self.average is None:
                self.average = [t.detach().clone() for t in tensors]
            else:
                total = max(1, int(trainer.estimated_stepping_batches))
                rho = self.decay * min(1.0, step / total) ** self.ramp_power
                for avg, t in zip(self.average, tensors, strict=True):
                    avg.lerp_(t, 1 - rho)
                    t.copy_(avg)
        if self.average is not None and batch_idx + 1 >= trainer.num_training_batches:
            for avg, t in zip(self.average, self._tensors(pl_module), strict=True):
                t.copy_(avg)

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.average = state_dict.get("average")
