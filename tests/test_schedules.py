"""Learning-rate schedules as the trainer steps them: warm-up, peak, decay, never negative."""

import lightning as L
import pytest
import torch
from torch import nn

from vislang.config import ExperimentConfig
from vislang.tasks.classification import ClassificationTask


class LrRecorder(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, *args) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_end(self, trainer, *args) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def lr_trace(**train) -> list[float]:
    cfg = ExperimentConfig.model_validate({"train": {"epochs": 4, "lr": 0.1, **train}})
    task = ClassificationTask(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), cfg, num_classes=3)
    data = torch.utils.data.TensorDataset(torch.randn(40, 1, 2, 2), torch.randint(0, 3, (40,)))
    rec = LrRecorder()
    trainer = L.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[rec],
                        limit_val_batches=0)
    trainer.fit(task, torch.utils.data.DataLoader(data, batch_size=8))  # 5 steps per epoch
    return rec.lrs


def test_onecycle_peaks_mid_run_and_ends_near_zero_never_negative():
    lrs = lr_trace(schedule="onecycle", pct_start=0.25)
    assert min(lrs) >= 0
    assert max(lrs) == pytest.approx(0.1, rel=0.02)
    assert 3 <= lrs.index(max(lrs)) <= 7  # a quarter of 20 steps
    assert lrs[-1] < 0.001


def test_cosine_with_warmup():
    lrs = lr_trace(schedule="cosine", warmup_epochs=1)
    assert lrs[0] == pytest.approx(0.1 / 5)  # first of 5 warm-up steps
    assert lrs[4] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:])) and lrs[-1] < 0.01


def test_step_schedule_decays_by_gamma_every_step_size_epochs():
    lrs = lr_trace(schedule="step", step_size=2, gamma=0.1)
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.01) and lrs[19] == pytest.approx(0.01)
