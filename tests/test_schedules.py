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


def test_onecycle_div_factors_give_airbench_triangle():
    lrs = lr_trace(schedule="onecycle", pct_start=0.25, div_factor=5, final_div_factor=0.2 / 0.07)
    assert lrs[0] == pytest.approx(0.1 / 5)  # starts at lr / div_factor
    assert max(lrs) == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(0.1 * 0.07) and min(lrs) == pytest.approx(0.1 * 0.07)  # ends at 7% of lr


def test_lookahead_trains_from_the_average_exactly_as_airbench_does():
    import copy

    from vislang.callbacks import Lookahead

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    reference = copy.deepcopy(net)
    cfg = ExperimentConfig.model_validate({"train": {"epochs": 3, "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0,
                                                     "schedule": "none"}})
    data = torch.utils.data.TensorDataset(torch.randn(40, 1, 2, 2), torch.randint(0, 3, (40,)))
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[Lookahead(decay=0.6, every=2, ramp_power=1.0, start_epoch=1)])
    trainer.fit(ClassificationTask(net, cfg, num_classes=3), torch.utils.data.DataLoader(data, batch_size=8))

    # the same 15 steps by hand: plain SGD, then every 2nd step from epoch 1 on the average moves toward
    # the weights (rho = 0.6 * step / 15) and is copied back; each epoch ends on the average
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    tensors = [t for t in reference.state_dict().values() if t.is_floating_point()]
    average, step = None, 0
    for epoch in range(3):
        for x, y in torch.utils.data.DataLoader(data, batch_size=8):
            loss = nn.functional.cross_entropy(reference(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if epoch >= 1 and step % 2 == 0:
                if average is None:
                    average = [t.clone() for t in tensors]
                else:
                    for avg, t in zip(average, tensors):
                        avg.lerp_(t, 1 - 0.6 * step / 15)
                        t.copy_(avg)
        if average is not None:
            for avg, t in zip(average, tensors):
                t.copy_(avg)
    for (name, got), want in zip(net.state_dict().items(), reference.state_dict().values()):
        if got.is_floating_point():
            assert torch.allclose(got, want, atol=1e-6), name  # (plain SGD, without the averaging, differs)


def test_lookahead_without_decay_is_a_config_error():
    with pytest.raises(ValueError, match="decay"):
        ExperimentConfig.model_validate({"train": {"ema": {"lookahead": True}}})
