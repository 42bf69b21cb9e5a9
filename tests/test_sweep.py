"""Sweeps: search-space validation, a grid sweep end to end (best recipe + report), pruning, resuming a
killed sweep, and two worker processes sharing one SQLite study."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from vislang.config import build_config, load_config
from vislang.errors import VislangError
from vislang.tune.sweep import PruningCallback, Sweep, parse_spec, run_sweep

SWEEP = """
name: sw
seed: 0
data:
  dataset: cifar10_sample
  subset: {train: 300, test: 100}
  batch_size: 100
model:
  name: cnn
  channels: [[8], [16]]
train:
  epochs: 1
  threads: 1
sweep:
  metric: val/acc
  sampler: grid
  n_trials: 10
  space:
    train.lr: [0.1, 0.01]
"""


def config(tmp_path: Path, **sweep) -> object:
    raw = yaml.safe_load(SWEEP)
    raw["output_dir"] = str(tmp_path)
    raw["sweep"].update(sweep)
    return build_config(raw)


def test_space_over_unknown_keys_is_an_error(tmp_path):
    with pytest.raises(VislangError, match="'train.lrr'") as err:
        run_sweep(config(tmp_path, space={"train.lrr": [0.1]}))
    assert "Did you mean 'lr'" in str(err.value)
    with pytest.raises(VislangError, match="model.dropoutt"):
        run_sweep(config(tmp_path, space={"model.dropoutt": {"type": "uniform", "low": 0, "high": 0.5}}))
    with pytest.raises(VislangError, match="train.lr"):  # a value the config rejects (lr must be > 0)
        run_sweep(config(tmp_path, space={"train.lr": {"type": "uniform", "low": 0.0, "high": 0.1}}))
    with pytest.raises(VislangError, match="grid sampler needs a choice"):
        run_sweep(config(tmp_path, space={"train.lr": {"type": "loguniform", "low": 0.001, "high": 0.1}}))
    assert not list(tmp_path.glob("*/trials/*"))  # nothing was trained


def test_grid_sweep_writes_best_recipe_and_report(tmp_path):
    result = run_sweep(config(tmp_path), progress=False)
    trials = result.study.trials
    assert len(trials) == 2 and {t.params["train.lr"] for t in trials} == {0.1, 0.01}  # grid capped at its size
    assert all(t.state == TrialState.COMPLETE for t in trials)
    best = max(trials, key=lambda t: t.value)
    recipe = load_config(result.best_config)  # a ready recipe: validates and trains as is
    assert recipe.train.lr == best.params["train.lr"] and recipe.sweep is None and recipe.name == "sw_best"
    assert "vislang train" in result.best_config.read_text().splitlines()[2]
    for t in trials:
        run = Path(t.user_attrs["run_dir"])
        assert (run / "metrics.json").is_file() and yaml.safe_load((run / "config.yaml").read_text())["sweep"] is None
        assert not (run / "report.html").exists() and not list(run.glob("plots/*.png"))  # trials stay light
    html = result.report.read_text()
    assert "Optimisation history" in html and "data:image/png;base64," in html


def test_pruning_callback_stops_a_bad_trial():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    good = study.ask()
    for epoch in range(1, 4):
        good.report(0.9, epoch)
    study.tell(good, 0.9)
    bad = study.ask()
    trainer = SimpleNamespace(sanity_checking=False, current_epoch=0, max_epochs=3,
                              callback_metrics={"val/acc": torch.tensor(0.1)})
    with pytest.raises(optuna.TrialPruned):
        PruningCallback(bad, "val/acc").on_validation_end(trainer, None)
    trainer.current_epoch = 2  # the last epoch: report, but let the trial finish
    PruningCallback(bad, "val/acc").on_validation_end(trainer, None)
    assert study.trials[1].intermediate_values == pytest.approx({1: 0.1, 3: 0.1})  # step = epochs done


def test_trial_curves_name_the_metric_the_epoch_and_each_trials_parameters():
    import warnings

    import optuna.visualization.matplotlib as ovm

    from vislang.tune.sweep_report import label_trial_curves

    study = optuna.create_study(direction="maximize")
    for lr, acc in ((0.1, 0.7), (0.001, 0.4)):
        study.enqueue_trial({"train.lr": lr})
        trial = study.ask({"train.lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)})
        for epoch in (1, 2):
            trial.report(acc * epoch / 2, epoch)
        study.tell(trial, acc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        ax = label_trial_curves(ovm.plot_intermediate_values(study), study, "val/acc")
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "val/acc"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["trial 0: train.lr=0.1", "trial 1: train.lr=0.001"]


def test_a_killed_sweep_resumes_with_the_lost_trial_retried(tmp_path):
    cfg = config(tmp_path, sampler="random", n_trials=1,
                 space={"train.lr": {"type": "loguniform", "low": 0.001, "high": 0.1}})
    spec = parse_spec(cfg)
    sweep = Sweep(cfg, spec, storage=None, worker=False, source="test")
    lost = sweep.next_trial()
    lost.suggest_float("train.lr", 0.001, 0.1, log=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lost.set_user_attr("worker", f"{socket.gethostname()}:{int(dead.stdout)}")  # its process was killed
    result = run_sweep(cfg, progress=False)
    states = [t.state for t in result.study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]  # the lost trial, then its retry
    retried = [t for t in result.study.trials if t.user_attrs.get("retry_of") == 0]
    assert len(retried) == 1 and retried[0].params == result.study.trials[0].params


def test_two_workers_share_one_sqlite_study(tmp_path):
    """Two processes on one study: exactly n_trials finished, none lost, none run twice."""
    cfg_path = tmp_path / "sw.yaml"
    raw = yaml.safe_load(SWEEP) | {"output_dir": str(tmp_path)}
    raw["sweep"].update(sampler="random", n_trials=3, pruning=False,
                        space={"train.lr": {"type": "loguniform", "low": 0.001, "high": 0.1}})
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = load_config(cfg_path)
    Sweep(cfg, parse_spec(cfg), storage=None, worker=False, source=str(cfg_path))  # creates the study
    # Each worker holds its first trial until the other worker has started one too, so "both workers ran
    # trials" does not depend on how fast the two processes start (a trial takes about 2 s).
    barrier = tmp_path / "started"
    barrier.mkdir()
    hold = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from vislang.tune.sweep import Sweep\n"
        "run_trial, barrier = Sweep.run_trial, Path(sys.argv.pop(1))\n"
        "def held(self, trial):\n"
        "    (barrier / str(os.getpid())).touch()\n"
        "    deadline = time.monotonic() + 300\n"
        "    while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:\n"
        "        time.sleep(0.05)\n"
        "    run_trial(self, trial)\n"
        "Sweep.run_trial = held\n"
        "from vislang.cli import main\n"
        "sys.argv[0] = 'vislang'\n"
        "main()\n"
    )
    cmd = [sys.executable, "-c", hold, str(barrier), "sweep", str(cfg_path), "--worker"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    study = optuna.load_study(study_name="sw", storage=f"sqlite:///{tmp_path / 'sw_sweep' / 'study.db'}")
    trials = study.trials
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == [0, 1, 2]
    assert len({t.params["train.lr"] for t in trials}) == 3
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers ran trials
    runs = {t.user_attrs["run_dir"] for t in trials}
    assert len(runs) == 3 and all((Path(r) / "run.json").is_file() for r in runs)
