"""Train a list of recipes one after another inside a wall-time budget and print what each reached.

Meant for a borrowed GPU (or any machine) where the time is metered: for every recipe it first runs a
short probe (3 epochs on a small train subset, the last one timed) to measure the training throughput on this machine,
then trains the recipe in full -- with fewer epochs than the recipe asks for only when the full
schedule would not fit in that recipe's budget (the table says so) -- and collects test accuracy,
training time and images/s. One JSON summary (metrics, per-epoch history, run facts) is written so
the figures travel back from a remote machine as a single file. Run::

    VISLANG_MIRROR=../shared/data python benchmarks/run_recipes.py \\
        configs/tinyimagenet30_effnet_lite0_finetune.yaml:150 configs/tinyimagenet30_resnet.yaml:240 \\
        --out /tmp/recipes

Each positional argument is ``CONFIG[:BUDGET_SECONDS][@KEY=VALUE...]``: the training-time budget
(default 600 s) and overrides for that recipe alone (``@name=...`` to run one config twice).
``--light`` skips plots, explanations and the HTML report (``vislang evaluate RUN`` draws the plots later).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vislang.callbacks import read_history
from vislang.config import load_config


def vislang(args: list[str], log: Path) -> tuple[int, float]:
    """Run ``python -m vislang ARGS``, appending its output to ``log``; (exit code, wall seconds)."""
    t0 = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"\n$ vislang {' '.join(args)}\n")
        fh.flush()
        rc = subprocess.call([sys.executable, "-m", "vislang", *args], stdout=fh, stderr=subprocess.STDOUT)
    return rc, time.perf_counter() - t0


def train_images(cfg: Any) -> int:
    """Training images of a recipe (its data set up as ``vislang train`` would, from the decoded store)."""
    from vislang.tasks import task_spec

    dm = task_spec(cfg.task).make_datamodule(cfg)
    dm.setup("fit")
    return int(dm.split_sizes["train"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipes", nargs="+", help="CONFIG[:BUDGET_SECONDS]")
    ap.add_argument("--out", type=Path, required=True, help="run directories and summary.json go here")
    ap.add_argument("--probe-images", type=int, default=4096, help="train subset of the throughput probe")
    ap.add_argument("--light", action="store_true", help="no plots, explanations or report")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="override applied to every recipe")
    args = ap.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "recipes.log"
    summary: dict[str, dict] = {}
    for spec in args.recipes:
        head, *own = spec.split("@")
        config, _, budget = head.partition(":")
        budget_s = float(budget or 600)
        overrides = [*args.sets, *own]
        cfg = load_config(config, overrides)  # the validated recipe: its name and epochs, overrides applied
        name, epochs = cfg.name, cfg.train.epochs
        sets = [x for s in overrides for x in ("--set", s)]

        # probe: 3 epochs, the last one timed (warm: kernels loaded and chosen; with unfreeze_at_epoch 1 it
        # is the whole network)
        probe = ["train", config, *sets, "--light", "--set", f"output_dir={args.out / 'probe'}", "--set", "train.epochs=3",
                 "--set", f"data.subset={{train: {args.probe_images}, val: 256, test: 256}}"]
        rc, probe_wall = vislang(probe, log)
        rows = read_history(args.out / "probe" / name / "history.csv")
        if rc != 0 or not rows:
            summary[name] = {"error": f"probe failed (exit {rc}); see recipes.log"}
            print(f"{name}: probe failed (exit {rc})", flush=True)
            continue
        ips = rows[-1]["images_per_s"]
        train_n = train_images(cfg)
        planned = epochs
        if train_n and ips:
            fit = math.floor(budget_s * ips / train_n)
            planned = max(1, min(epochs, fit))
        print(f"{name}: probe {ips:.0f} img/s -> {planned}/{epochs} epochs in {budget_s:.0f} s", flush=True)

        run = ["train", config, *sets, *(["--light"] if args.light else []), "--set", f"output_dir={args.out / 'runs'}", "--set", f"train.epochs={planned}"]
        rc, wall = vislang(run, log)
        rundir = args.out / "runs" / name
        entry: dict = {"config": config, "overrides": overrides, "recipe_epochs": epochs, "epochs": planned, "probe_images_per_s": ips,
                       "wall_s": round(wall, 1), "exit": rc}
        for fname in ("run.json", "metrics.json"):
            if (rundir / fname).exists():
                entry[fname.removesuffix(".json")] = json.loads((rundir / fname).read_text())
        entry["history"] = read_history(rundir / "history.csv")
        for split in ("val", "test"):
            m = entry.get("metrics", {}).get(split, {})
            for key in ("per_class", "confusion_matrix"):
                m.pop(key, None)
        summary[name] = entry
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
        test = entry.get("metrics", {}).get("test", {})
        print(f"{name}: exit {rc}, {planned} epochs, train {entry.get('run', {}).get('train_time_s')} s, "
              f"wall {wall:.0f} s, test acc {test.get('accuracy')}", flush=True)

    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{'recipe':<40} {'epochs':>8} {'train s':>8} {'wall s':>7} {'test acc':>9}")
    for name, e in summary.items():
        if "error" in e:
            print(f"{name:<40} {e['error']}")
            continue
        acc = e.get("metrics", {}).get("test", {}).get("accuracy")
        print(f"{name:<40} {e['epochs']:>3}/{e['recipe_epochs']:<4} {e.get('run', {}).get('train_time_s', float('nan')):>8} "
              f"{e['wall_s']:>7} {acc if acc is None else f'{100 * acc:.2f}%':>9}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
