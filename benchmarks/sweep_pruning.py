"""Pruning pays: the same 20-trial sweep on ``cifar10_cnn`` with and without pruning.

Target: with pruning the sweep finishes >= 2x sooner and reaches the same best validation accuracy
(+-0.5 points). Both sweeps use the random sampler with the same seed, so they try the same 20
configurations in the same order (vislang seeds each trial's sample by its number); pruning only
decides which of them stop early. Trials are deterministic (same config + seed = same run), so a
best trial that is not pruned scores exactly the same on both sides.

Scaled down to fit a 2-core CPU (both sides in ~15-20 minutes): the recipe's model (VGG-style CNN,
64-128-256 channels) on a stratified subset of CIFAR-10 (``--train`` images, a quarter of them carved
out for validation) for ``--epochs`` epochs per trial. The subset must be large enough for the models
to learn something by epoch 1 (with 480 images every trial sat at 10-18% and the pruner could not
tell them apart). Wall times depend on what else the machine runs; the epochs trained are the
load-independent figure.

    python benchmarks/sweep_pruning.py                          # 20 trials, 6 epochs, 1,600 images
    python benchmarks/sweep_pruning.py --pruner median --trials 10
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("VISLANG_MIRROR", str(ROOT.parent / "shared" / "data"))

SPACE = {
    "train.lr": {"type": "loguniform", "low": 0.002, "high": 0.4},
    "train.weight_decay": {"type": "loguniform", "low": 1e-5, "high": 5e-3},
    "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
}


def experiment(out: Path, args: argparse.Namespace, pruning: bool):
    from vislang.config import load_config

    cfg = load_config(ROOT / "configs" / "cifar10_cnn.yaml", [
        f"output_dir={out}", f"name={'pruned' if pruning else 'full'}", f"train.epochs={args.epochs}",
        f"data.subset={{train: {args.train}, test: {args.test}}}", f"data.val_fraction={args.val_fraction}",
        "data.batch_size=128", "eval.tta_flip=false",
    ])
    cfg.sweep = {"metric": "val/acc", "n_trials": args.trials, "sampler": "random", "pruning": pruning,
                 "pruner": args.pruner, "space": SPACE}
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--train", type=int, default=1600, help="training images (--val-fraction of them become validation)")
    ap.add_argument("--val-fraction", type=float, default=0.25)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--pruner", default="halving", choices=["halving", "median", "hyperband"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from optuna.trial import TrialState

    from vislang.data.datamodule import ImageDataModule
    from vislang.tune.sweep import run_sweep

    out = args.out or Path(tempfile.mkdtemp(prefix="sweep-pruning-"))
    warm = experiment(out, args, False)
    ImageDataModule(warm.data, warm.seed).setup()  # decode once, outside both timings
    results = {}
    for pruning in (False, True):
        cfg = experiment(out, args, pruning)
        t0 = time.perf_counter()
        res = run_sweep(cfg, progress=True, source="benchmark")
        wall = time.perf_counter() - t0
        trials = res.study.trials
        epochs = sum(len(t.intermediate_values) for t in trials)
        best = res.study.best_trial
        results[pruning] = (wall, best, trials, epochs)
        pruned = sum(t.state == TrialState.PRUNED for t in trials)
        print(f"{'with' if pruning else 'without'} pruning: {wall:.0f} s, {len(trials)} trials ({pruned} pruned), "
              f"{epochs} epochs trained, best val/acc {best.value:.4f} (trial {best.number}) → {res.report}",
              flush=True)
    (t_full, b_full, trials_full, e_full), (t_pr, b_pr, trials_pr, e_pr) = results[False], results[True]
    same_params = all(a.params == b.params for a, b in zip(trials_full, trials_pr))
    gap = abs(b_full.value - b_pr.value) * 100
    print(f"\nsweep of {args.trials} trials, cifar10_cnn, {args.train} images x {args.epochs} epochs, "
          f"pruner {args.pruner}:")
    print(f"  wall time   without {t_full:7.0f} s   with {t_pr:7.0f} s   speed-up {t_full / t_pr:.2f}x (target >= 2x)")
    print(f"  epochs      without {e_full:7d}     with {e_pr:7d}     ratio {e_full / max(e_pr, 1):.2f}x")
    print(f"  best val/acc without {b_full.value:.4f} (trial {b_full.number})   with {b_pr.value:.4f} "
          f"(trial {b_pr.number})   gap {gap:.2f} points (target <= 0.5)")
    print(f"  same configurations tried on both sides: {same_params}")


if __name__ == "__main__":
    main()
