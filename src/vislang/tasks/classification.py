"""Classification as a LightningModule: loss, optimiser and schedule, metrics, batched augmentation.

Image and text classifiers share it: the model returns logits ``[B, C]``. Batches arrive as raw
uint8 tensors; augmentation and normalisation run on the training device in
``on_after_batch_transfer`` so the data pipeline does no per-sample Python work.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from vislang.config import ExperimentConfig, TrainConfig


def class_weights_tensor(spec: Any, classes: list[str], counts: list[int]) -> torch.Tensor | None:
    """Loss weights from ``train.class_weights``: ``auto`` = inverse frequency ``n / (C * count)`` (as
    scikit-learn's 'balanced'; a class absent from train gets 0), a list in class order, or a
    ``{class: weight}`` map (classes not named get 1); None stays None."""
    from vislang.errors import VislangError, did_you_mean

    if spec is None:
        return None
    if spec == "auto":
        c = torch.tensor(counts, dtype=torch.float32)
        return torch.where(c > 0, c.sum() / (len(counts) * c.clamp(min=1)), torch.zeros_like(c))
    if isinstance(spec, dict):
        unknown = [k for k in spec if str(k) not in classes]
        if unknown:
            raise VislangError(f"train.class_weights names class '{unknown[0]}', which is not a class of the data."
                               f"{did_you_mean(str(unknown[0]), classes)} Classes: {', '.join(classes)}.")
        return torch.tensor([float(spec.get(c, 1.0)) for c in classes], dtype=torch.float32)
    if len(spec) != len(classes):
        raise VislangError(f"train.class_weights has {len(spec)} weights but the data has {len(classes)} classes "
                           f"({', '.join(classes)}); give one per class, a {{class: weight}} map, or auto.")
    return torch.tensor([float(w) for w in spec], dtype=torch.float32)


def metric_mode(metric: str) -> str:
    """'min' for losses and errors, 'max' for everything else (accuracy, F1, AUC)."""
    return "min" if any(w in metric for w in ("loss", "err")) else "max"


class WeightedMean(Metric):
    """Mean of per-batch values weighted by batch size, summed across processes under DDP.

    torchmetrics' MeanMetric checks every update for NaNs (a host-device sync per step on a GPU), and
    with ``nan_strategy="disable"`` it drops the weights (torchmetrics 1.9), hence this one.
    """

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # float32 as Lightning's own running means (MPS has no float64)
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, n: int) -> None:
        self.total += value.detach().float() * n
        self.count += n

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp(min=1)

    def running(self) -> float | None:
        """This process's mean so far, without syncing processes (for a progress bar)."""
        return float(self.total / self.count) if float(self.count) else None


class ClassificationTask(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        cfg: ExperimentConfig,
        num_classes: int,
        transform: nn.Module | None = None,
        class_weights: torch.Tensor | None = None,
    ):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.num_classes = num_classes
        # uint8 batch -> augmented, normalised float batch (identity for already-float inputs)
        self.transform = transform
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.train_loss, self.val_loss = WeightedMean(), WeightedMean()
        self._train_logged = self._val_logged = False  # handed to self.log yet this epoch (reset at its start)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes, average="macro")
        self.val_top5 = MulticlassAccuracy(num_classes, average="micro", top_k=5) if num_classes > 5 else None
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    # ----------------------------------------------------------------------------------- data
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch
        if self.transform is not None:
            x = self.transform(x, train=self.trainer.training if self._trainer else False)
        return x, y

    def forward(self, x: Any) -> torch.Tensor:
        """Logits for a prepared batch input: a tensor (images), or a tuple / dict of tensors (text: ids, lengths)."""
        if isinstance(x, (tuple, list)):
            return self.model(*x)
        return self.model(**x) if isinstance(x, dict) else self.model(x)

    def tta_views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The test-time views of a prepared batch chosen by ``eval.tta_flip`` / ``eval.tta_translate``."""
        views = [x]
        if not isinstance(x, torch.Tensor):  # text inputs (ids, lengths): no test-time views
            return views
        shift = getattr(self.cfg.eval, "tta_translate", 0)
        if shift and x.dim() == 4:
            padded = F.pad(x, (shift,) * 4, mode="reflect")
            h, w = x.shape[-2:]
            views += [padded[..., :h, :w], padded[..., 2 * shift:, 2 * shift:]]  # up-left, down-right
        if getattr(self.cfg.eval, "tta_flip", False):
            views += [v.flip(-1) for v in views]
        return views

    def predict_proba(self, x: torch.Tensor, tta: bool = True) -> torch.Tensor:
        """Class probabilities for a prepared (normalised) batch, averaged over the configured TTA views."""
        views = self.tta_views(x) if tta else [x]
        return torch.stack([self(v).float().softmax(-1) for v in views]).mean(0)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), y, weight=self.class_weights, label_smoothing=self.cfg.train.label_smoothing
        )

    # ------------------------------------------------------------------------------- training
    # Metrics accumulate every step (update) but are handed to ``self.log`` once per epoch: Lightning
    # computes a logged torchmetrics Metric from its accumulated state at the epoch's end, and each
    # ``self.log`` call costs ~0.6 ms of Python (it re-applies ``.to(device)`` across its result record),
    # 5% of a small model's training step when called twice a step. The progress bar shows the running
    # loss (callbacks.ThroughputBar reads ``train_loss.running()``).
    def on_train_epoch_start(self) -> None:
        self._train_logged = False
        # a model with a per-epoch schedule of its own (gradual unfreezing of a backbone) follows the epoch
        # and so does a batch transform whose training crop changes with the epoch (crop_epochs)
        for module in (self.model, self.transform):
            set_epoch = getattr(module, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(self.current_epoch)

    def on_validation_epoch_start(self) -> None:
        self._val_logged = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        self.train_loss.update(loss, len(y))
        self.train_acc.update(logits.detach(), y)
        if not self._train_logged:
            self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
            self._train_logged = True
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        views = self.tta_views(x)
        logits = self(x) if len(views) == 1 else torch.stack(
            [self(v).float().log_softmax(-1) for v in views]).mean(0)
        self.val_loss.update(F.cross_entropy(logits.float(), y), len(y))
        self.val_acc.update(logits, y)
        self.val_f1.update(logits, y)
        if self.val_top5 is not None:
            self.val_top5.update(logits, y)
        if not self._val_logged:
            self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True)
            self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)
            self.log("val/f1_macro", self.val_f1, on_epoch=True)
            if self.val_top5 is not None:
                self.log("val/top5", self.val_top5, on_epoch=True)
            self._val_logged = True

    # ------------------------------------------------------------------------------ optimiser
    def _param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """No weight decay on biases and normalisation parameters (1-D tensors), the usual practice;
        normalisation layers' parameters learn at ``lr * train.bias_lr_mult`` (airbench's bias scaler).

        A model with a pretrained ``backbone`` module gets its parameters in their own groups at
        ``lr * train.backbone_lr_mult`` (discriminative learning rates), frozen ones included: they get
        no gradient (so no update) until the model unfreezes them (``unfreeze_at_epoch``).
        """
        backbone = getattr(self.model, "backbone", None)
        in_backbone = {id(p) for p in backbone.parameters()} if isinstance(backbone, nn.Module) else set()
        norm_types = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
        in_norm = {id(p) for m in self.model.modules() if isinstance(m, norm_types) for p in m.parameters(False)}
        groups: dict[tuple[bool, bool, bool], list[nn.Parameter]] = {}
        for p in self.model.parameters():
            if p.requires_grad or id(p) in in_backbone:
                groups.setdefault((id(p) in in_backbone, p.ndim <= 1, id(p) in in_norm), []).append(p)
        out = []
        t = self.cfg.train
        bias_mult = getattr(t, "bias_lr_mult", 1.0)
        for (is_backbone, no_decay, is_norm), params in sorted(groups.items()):
            group: dict[str, Any] = {"params": params, "weight_decay": 0.0 if no_decay else weight_decay}
            mult = getattr(t, "backbone_lr_mult", 1.0) if is_backbone else 1.0
            if is_norm and bias_mult != 1.0:
                # airbench's bias scaler: lr * m with weight decay / m, so the per-step decay is the weights'
                mult *= bias_mult
                group["weight_decay"] = weight_decay / bias_mult
            if mult != 1.0:
                group["lr"] = t.lr * mult
            out.append(group)
        return out

    def configure_optimizers(self) -> Any:
        t: TrainConfig = self.cfg.train
        groups = self._param_groups(t.weight_decay)
        # the fused kernels make one pass over each tensor instead of one per elementwise op: Adam's step is ~2x
        # faster on the CPU, SGD's (weight decay + momentum + Nesterov) ~5x, which is a quarter of an MLP's step
        fused = {"fused": True} if self.device.type in ("cpu", "cuda") else {}
        if t.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0,
                                  **fused)
        else:
            cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
            opt = cls(groups, lr=t.lr, **fused)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, t.epochs))
        if t.schedule == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=t.gamma, patience=t.plateau_patience
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss"}}
        factor = lr_factor_fn(t, per_epoch, total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def lr_factor_fn(t: TrainConfig, steps_per_epoch: int, total_steps: int):
    """Per-step multiplier of the peak lr for every schedule but 'plateau'.

    onecycle: linear rise from lr/div_factor to lr over ``pct_start`` of the steps, then linear decay
    to lr/(div_factor*final_div_factor) (the shape of PyTorch's OneCycleLR with linear annealing, with
    its parameter names; written here because OneCycleLR overshoots below zero on the scheduler step
    Lightning takes after the last batch). airbench's "triangle" is div_factor 5, final_div_factor 2.86.
    The others: linear warm-up over ``warmup_epochs``, then cosine / step decay / constant.
    """
    warmup = int(t.warmup_epochs * steps_per_epoch)
    peak = max(1, round(t.pct_start * total_steps))

    start = 1 / t.div_factor
    end = start / t.final_div_factor

    def factor(step: int) -> float:
        if t.schedule == "onecycle":
            if step < peak:
                return start + (1 - start) * step / peak
            return max(end, 1 - (1 - end) * (step - peak) / max(1, total_steps - peak))
        if step < warmup:
            return (step + 1) / warmup
        if t.schedule == "cosine":
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if t.schedule == "step":
            return t.gamma ** ((step // steps_per_epoch) // t.step_size)
        return 1.0

    return factor
