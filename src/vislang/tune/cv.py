"""``vislang cv CONFIG --folds K``: k-fold cross-validation where every fold is a normal run.

Fold ``i`` is the experiment with ``data.cv_folds=K, data.cv_fold=i`` (the task's data module makes
the split: stratified and seeded for classification; grouped by image for captioning) trained into
``<output_dir>/<name>_cv<K>/<name>_fold<i>/``. Folds run one after another in this process, or as
``--jobs`` parallel ``vislang train`` processes (their logs in ``fold<i>.log``). A fold is finished
when its run.json says ``status: finished``; an interrupted CV started again keeps finished folds,
continues a fold that has a last checkpoint, and restarts the others. The summary (mean ± sample std
over folds of every metric) is printed and written to ``cv_summary.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vislang.errors import VislangError
from vislang.io import atomic_write_json


def cv_dir(cfg: Any, folds: int) -> Path:
    return Path(cfg.output_dir) / f"{cfg.name}_cv{folds}"


def fold_config(cfg: Any, folds: int, fold: int) -> Any:
    """The experiment of one fold: same config, ``data.cv_folds/cv_fold`` set, own name and folder."""
    from vislang.config import build_config

    raw = cfg.to_dict()
    data = raw.get("data")
    if not isinstance(data, dict) or "cv_folds" not in data:
        raise VislangError(f"Task '{cfg.task}' does not support cross-validation yet: its data section has no "
                           "cv_folds/cv_fold keys (the task's data module must implement the fold split).")
    data.update(cv_folds=folds, cv_fold=fold)
    raw.update(name=f"{cfg.name}_fold{fold}", output_dir=str(cv_dir(cfg, folds)), sweep=None)
    return build_config(raw, f"fold {fold} of {cfg.name}")


def fold_status(run_dir: Path) -> str:
    """'finished', 'resumable' (has a last checkpoint), 'partial' (a folder without one) or 'missing'."""
    if not run_dir.is_dir():
        return "missing"
    try:
        if json.loads((run_dir / "run.json").read_text()).get("status") == "finished":
            return "finished"
    except (OSError, ValueError):
        pass
    return "resumable" if (run_dir / "checkpoints" / "last.ckpt").is_file() else "partial"


def _train_fold(cfg: Any, run_dir: Path, log: Path | None) -> int:
    """Train one fold: in this process (``log`` None), or as a ``vislang train`` child process writing
    to ``log``; returns the exit status."""
    from vislang.config import save_config
    from vislang.run import train

    status = fold_status(run_dir)
    if status == "partial":
        shutil.rmtree(run_dir)  # started but never finished an epoch: nothing to keep
    resume = run_dir if status == "resumable" else None
    if log is None:
        train(cfg, resume=resume)
        return 0
    cfg_file = run_dir.parent / f"{run_dir.name}.yaml"
    save_config(cfg, cfg_file)
    args = ["--resume", str(run_dir)] if resume else [str(cfg_file)]
    with log.open("w") as fh:
        return subprocess.run([sys.executable, "-m", "vislang", "train", *args], stdout=fh,
                              stderr=subprocess.STDOUT, env=os.environ.copy()).returncode


def run_cv(cfg: Any, folds: int = 5, jobs: int = 1, console: Any = None) -> dict[str, Any]:
    """Train every unfinished fold of ``cfg`` and return (and write) the summary."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm.auto import tqdm

    if folds < 2:
        raise VislangError("--folds must be at least 2.")
    if jobs < 1:
        raise VislangError("--jobs must be at least 1.")
    configs = [fold_config(cfg, folds, i) for i in range(folds)]
    root = cv_dir(cfg, folds)
    root.mkdir(parents=True, exist_ok=True)
    runs = [root / c.name for c in configs]
    todo = [i for i, r in enumerate(runs) if fold_status(r) != "finished"]
    say = console.print if console is not None else print
    if len(todo) < folds:
        say(f"{root}: {folds - len(todo)} of {folds} folds already finished, kept.")
    if jobs == 1:
        for i in todo:
            say(f"fold {i + 1}/{folds} → {runs[i]}")
            _train_fold(configs[i], runs[i], None)
        return summarise(runs, root / "cv_summary.json")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    for i in todo:  # share the cores between the parallel folds
        if configs[i].train.threads is None:
            configs[i].train.threads = threads
    say(f"{len(todo)} folds, {jobs} at a time; logs in {root}/fold<i>.log")
    failed = []
    # threads only wait on child processes (each fold trains in its own `vislang train` process)
    with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(total=len(todo), desc="folds", unit="fold") as bar:
        futures = {pool.submit(_train_fold, configs[i], runs[i], root / f"fold{i}.log"): i for i in todo}
        for fut in as_completed(futures):
            if fut.result() != 0:
                failed.append(futures[fut])
            bar.update(1)
    if failed:
        logs = ", ".join(str(root / f"fold{i}.log") for i in sorted(failed))
        raise VislangError(f"Fold(s) {sorted(failed)} failed; see {logs}. Finished folds are kept: run the same "
                           "command again to continue.")
    return summarise(runs, root / "cv_summary.json")


def summarise(runs: list[Path], path: Path | None = None) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max over folds of every scalar metric in each fold's
    metrics.json summary; per-fold values too."""
    per_fold = []
    for r in runs:
        if fold_status(r) != "finished":
            raise VislangError(f"Fold run {r} is not finished; run the CV again to complete it.")
        metrics = json.loads((r / "metrics.json").read_text()).get("summary", {})
        per_fold.append({k: float(v) for k, v in metrics.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)})
    keys = [k for k in per_fold[0] if all(k in f for f in per_fold)]
    summary = {}
    for k in keys:
        values = np.array([f[k] for f in per_fold])
        summary[k] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                      "min": float(values.min()), "max": float(values.max())}
    out = {"folds": len(runs), "runs": [str(r) for r in runs], "metrics": summary, "per_fold": per_fold}
    if path is not None:
        atomic_write_json(path, out)
    return out


def summary_table(summary: dict[str, Any], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for col in ("metric", "mean ± std", "min", "max"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for k, s in summary["metrics"].items():
        digits = 1 if abs(s["mean"]) >= 100 else 4
        table.add_row(k, f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}", f"{s['min']:.{digits}f}",
                      f"{s['max']:.{digits}f}")
    return table
