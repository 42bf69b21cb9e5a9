"""Imbalanced data on real PneumoniaMNIST subsets: class weights, the balanced sampler, selection on
macro-F1, the per-class report and a decision threshold tuned on validation (used by test and predict)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from vislang.config import build_config
from vislang.data.sampling import BalancedBatchSampler
from vislang.data.transfer import TransferDataModule
from vislang.errors import VislangError
from vislang.evaluate import evaluate_run, run_threshold
from vislang.metrics.classification import classification_metrics, tune_threshold
from vislang.run import train
from vislang.tasks.classification import class_weights_tensor
from vislang.tasks.image import predict_cli


def test_class_weights_auto_explicit_and_errors():
    w = class_weights_tensor("auto", ["normal", "pneumonia"], [388, 3494])
    assert torch.allclose(w, torch.tensor([3882 / (2 * 388), 3882 / (2 * 3494)]))
    assert class_weights_tensor([1, 3], ["a", "b"], [5, 5]).tolist() == [1.0, 3.0]
    assert class_weights_tensor({"b": 2.5}, ["a", "b"], [5, 5]).tolist() == [1.0, 2.5]
    assert class_weights_tensor(None, ["a", "b"], [5, 5]) is None
    with pytest.raises(VislangError, match="3 weights but the data has 2 classes"):
        class_weights_tensor([1, 2, 3], ["a", "b"], [5, 5])
    with pytest.raises(VislangError, match="names class 'pneumonai'.*pneumonia"):
        class_weights_tensor({"pneumonai": 2}, ["normal", "pneumonia"], [5, 5])


@pytest.mark.usefixtures("mirror")
def test_balanced_sampler_evens_out_classes():
    cfg = build_config({"data": {"dataset": "pneumoniamnist", "sampler": "balanced", "batch_size": 128}})
    dm = TransferDataModule(cfg.data, seed=0, progress=False)
    dm.setup()
    labels = dm.labels["train"]
    assert labels.float().mean() > 0.85  # 9 in 10 training images show pneumonia
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, BalancedBatchSampler)
    batches = list(loader)
    drawn = torch.cat([y for _, y in batches])
    assert len(labels) - 128 < len(drawn) <= len(labels) and abs(drawn.float().mean().item() - 0.5) < 0.05
    assert batches[0][0].dtype == torch.uint8 and batches[0][0].shape[1:] == (3, 28, 28)
    again = torch.cat([y for _, y in dm.train_dataloader()])
    assert torch.equal(drawn, again)  # same seed and epoch, same draws
    loader.sampler.set_epoch(1)
    assert not torch.equal(torch.cat(list(loader.sampler)), torch.cat(list(dm.train_dataloader().sampler)))


def test_tune_threshold_maximises_f1_and_youden():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.3).astype(int)
    scores = np.clip(0.25 + 0.3 * y + rng.normal(0, 0.15, 400), 0, 1)
    t_f1, f1 = tune_threshold(scores, y, "f1")
    t_j, j = tune_threshold(scores, y, "youden")
    assert 0.25 < t_f1 < 0.55 and 0.25 < t_j < 0.55
    probs = np.stack([1 - scores, scores], 1)
    m = classification_metrics(probs, y, ["neg", "pos"], threshold=t_f1)
    assert m["threshold"] == t_f1 and abs(m["per_class"][1]["f1"] - f1) < 1e-9
    for t in (0.3, 0.5, 0.7):  # no other threshold does better
        assert classification_metrics(probs, y, ["neg", "pos"], threshold=t)["per_class"][1]["f1"] <= f1 + 1e-9


@pytest.mark.usefixtures("mirror")
def test_pneumonia_with_class_weights_threshold_and_macro_f1(tmp_path):
    cfg = build_config({
        "name": "pneu", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "data": {"dataset": "pneumoniamnist", "channels": 1, "subset": {"train": 600, "val": 200, "test": 200},
                 "batch_size": 64, "sampler": "shuffle"},
        "model": {"name": "cnn", "channels": [[16], [32]], "dropout": 0.0},
        "train": {"epochs": 3, "lr": 0.05, "class_weights": "auto", "checkpoint_monitor": "val/f1_macro",
                  "early_stopping": {"monitor": "val/f1_macro", "patience": 3}, "threads": 1},
        "eval": {"threshold": "f1"},
    })
    run = train(cfg, quiet=True)
    tuned = json.loads((run / "threshold.json").read_text())
    assert tuned["method"] == "f1" and 0.0 < tuned["threshold"] < 1.0
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    assert test["threshold"] == tuned["threshold"] == run_threshold(run)
    assert "accuracy_argmax" in test and test["roc_auc_ovr"] > 0.8
    assert [row["class"] for row in test["per_class"]] == ["normal", "pneumonia"]
    assert sum(row["support"] for row in test["per_class"]) == 200
    assert (run / "plots" / "pr_test.png").is_file()

    xray = tmp_path / "xray.png"
    Image.fromarray(np.full((28, 28), 90, dtype=np.uint8), "L").save(xray)
    console = Console(record=True, width=200)
    predict_cli(run, [xray], texts=[], top_k=2, beam=1, console=console)
    assert f"decision at threshold {tuned['threshold']:.3f}" in console.export_text()

    # another checkpoint gets a threshold tuned on its own val predictions, not the one tuned for best
    assert tuned["checkpoint"] == "best" and set(tuned["by_checkpoint"]) == {"best"}
    last_test = evaluate_run(run, splits=["test"], checkpoint="last", light=True)["test"]
    t_last = run_threshold(run, "last")
    assert last_test["threshold"] == t_last != tuned["threshold"]
    assert evaluate_run(run, splits=["val"], checkpoint="last", light=True)["val"]["threshold"] == t_last
    assert run_threshold(run) == run_threshold(run, "best") == tuned["threshold"]  # predict: the run's own
