"""The ``vislang`` command line: one small function per command, no logic of its own."""

from __future__ import annotations

import functools
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vislang.errors import VislangError

app = typer.Typer(help="Train, evaluate, compare and explain image classifiers, text classifiers and image captioners from one experiment file.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Datasets: list the registry, fetch into the cache.", no_args_is_help=True)
models_app = typer.Typer(help="Models: list the registry.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")


def _console(stderr: bool = False) -> Console:
    """Rich lays out for 80 columns when the output is not a terminal (a pipe, a log file, CI), which cuts wide
    tables (compare's leaderboard, cv summaries) into "tri…" cells. Such output gets 200 columns: a table still
    takes only the width it needs. A terminal keeps its own width, and COLUMNS still wins."""
    stream = sys.stderr if stderr else sys.stdout
    wide = not (os.environ.get("COLUMNS") or (hasattr(stream, "isatty") and stream.isatty()))
    return Console(stderr=stderr, width=200 if wide else None)


console = _console()
err_console = _console(stderr=True)


def cli_errors(fn: Any) -> Any:
    """Print user errors as one message (no traceback) and exit non-zero."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VislangError as err:
            # soft_wrap: never break a path in the middle; the terminal wraps long lines itself
            err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: finished epochs are saved; continue with "
                              "`vislang train --resume RUN`.")
            raise typer.Exit(130) from None

    return wrapper


def _metrics_table(metrics: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    table.add_column("split")
    keys = ["accuracy", "top5_accuracy", "f1_macro", "f1_weighted", "roc_auc_ovr",
            "bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "similarity"]  # + captioning
    splits = [s for s in metrics if s != "summary" and isinstance(metrics[s], dict)]
    keys = [k for k in keys if any(k in metrics[s] for s in splits)]
    for k in keys:
        table.add_column(k, justify="right")
    for s in splits:  # a missing metric (METEOR without Java) shows as '-', never as 0
        table.add_row(s, *[f"{metrics[s][k]:.4f}" if isinstance(metrics[s].get(k), (int, float)) else "-" for k in keys])
    return table


def _check_run_dir(run: Path) -> None:
    if not run.is_dir():
        raise VislangError(f"Run directory {run} does not exist.")
    if not (run / "config.yaml").is_file():
        raise VislangError(f"{run} is not a vislang run directory (it has no config.yaml).")


def _report_run(run_dir: Path, light: bool = False) -> None:
    from vislang.run import read_json

    metrics = read_json(run_dir / "metrics.json")
    console.print(_metrics_table(metrics, f"run {run_dir}"))
    where = (f"numbers only: vislang evaluate {run_dir} draws the plots" if light
             else f"plots in {run_dir / 'plots'}")
    console.print(f"run directory: [bold]{run_dir}[/]  ({where})", soft_wrap=True)


@app.command()
@cli_errors
def train(
    config: Annotated[Path | None, typer.Argument(help="experiment YAML (or a run's config.yaml)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="override a key: train.lr=0.01")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue an interrupted run directory")] = None,
    devices: Annotated[int | None, typer.Option(help="data-parallel devices (DDP)")] = None,
    light: Annotated[bool, typer.Option("--light", help="numbers only: metrics and predictions, no plots, "
                                        "explanations or report (later: `vislang evaluate RUN` draws the "
                                        "plots, `vislang report RUN` writes the report)")] = False,
) -> None:
    """Train an experiment; writes runs/<name>/ with checkpoints, metrics and plots."""
    from vislang.config import load_config
    from vislang.run import is_ddp_worker
    from vislang.run import train as run_train

    if resume is not None:
        cfg = load_config(resume / "config.yaml", set_)
    elif config is None:
        raise VislangError("Give an experiment file (vislang train configs/cifar10_cnn.yaml) or --resume RUN.")
    else:
        cfg = load_config(config, set_)
    if devices is not None:
        cfg.train.devices = devices
    run_dir = run_train(cfg, resume=resume, light=light)
    if not is_ddp_worker():
        _report_run(run_dir, light)


@app.command()
@cli_errors
def evaluate(
    run: Annotated[Path, typer.Argument(help="run directory")],
    split: Annotated[str | None, typer.Option(help="split to score (default: the config's eval.split)")] = None,
    checkpoint: Annotated[str, typer.Option(help="best or last")] = "best",
    beam: Annotated[int | None, typer.Option(help="captioning: beam size (default: the config's eval.beam)")] = None,
) -> None:
    """Score a trained run on a split; updates metrics.json, predictions and plots."""
    import inspect

    from vislang.config import load_config
    from vislang.tasks import task_spec

    _check_run_dir(run)
    task = load_config(run / "config.yaml").task
    spec = task_spec(task)
    extra = {}
    if beam is not None:
        if "beam" not in inspect.signature(spec.evaluate_run).parameters:
            raise VislangError(f"--beam applies to captioning runs; {run} is a {task} run.")
        extra["beam"] = beam
    metrics = spec.evaluate_run(run, [split] if split else None, checkpoint=checkpoint, **extra)
    console.print(_metrics_table(metrics, f"run {run}"))


@app.command()
@cli_errors
def predict(
    run: Annotated[Path, typer.Argument(help="run directory")],
    inputs: Annotated[list[Path] | None, typer.Argument(help="image files (image tasks), or text files of one input per line")] = None,
    text: Annotated[list[str] | None, typer.Option("--text", "-t", help="a text to classify (repeatable)")] = None,
    top_k: Annotated[int, typer.Option(help="classes to show per input")] = 5,
    beam: Annotated[int, typer.Option(help="captioning: beam size")] = 3,
) -> None:
    """Predict with a trained run: top-k classes for images or texts, or captions for images."""
    from vislang.config import load_config
    from vislang.tasks import task_spec

    _check_run_dir(run)
    spec = task_spec(load_config(run / "config.yaml").task)
    spec.predict_cli(run, list(inputs or []), texts=list(text or []), top_k=top_k, beam=beam, console=console)


@app.command()
@cli_errors
def quickstart(
    epochs: Annotated[int | None, typer.Option(help="override the example's epochs")] = None,
    output_dir: Annotated[str, typer.Option(help="where runs go")] = "runs",
    task: Annotated[str, typer.Option(help="which example: image, text or captioning")] = "image",
) -> None:
    """Train a small model on real data shipped with vislang (no network, ~2 minutes on a laptop CPU)."""
    from vislang.config import load_config
    from vislang.run import train as run_train

    overrides = [f"output_dir={output_dir}"] + ([f"train.epochs={epochs}"] if epochs else [])
    asset = resources.files("vislang") / "assets" / f"quickstart_{task}.yaml"
    if not asset.is_file():
        raise VislangError(f"No quickstart example '{task}'; choose image, text or captioning.")
    with resources.as_file(asset) as path:
        cfg = load_config(path, overrides)
    intro = {"image": "a small CNN on 5,000 real CIFAR-10 images shipped with vislang",
             "text": "a BiLSTM with attention on 600 real SST-2 sentences shipped with vislang",
             "captioning": "a small transformer captioner on 60 real Flickr8k photos shipped with vislang"}
    console.print(f"[bold]vislang quickstart[/]: {intro.get(task, cfg.name)}")
    run_dir = run_train(cfg)
    _report_run(run_dir)
    example = {"image": "IMAGE.jpg", "text": '--text "SENTENCE"', "captioning": "IMAGE.jpg"}[task]
    console.print(f"next: vislang predict {run_dir} {example}   ·   vislang evaluate {run_dir} --split val",
                  soft_wrap=True)


@data_app.command("list")
@cli_errors
def data_list() -> None:
    """List registered datasets."""
    from vislang.data.registry import DATASETS

    table = Table(title="datasets")
    for col in ("name", "task", "description"):
        table.add_column(col)
    for e in DATASETS.entries():
        table.add_row(e.name, str(e.meta.get("task", "image")), e.doc)
    console.print(table)


@data_app.command("fetch")
@cli_errors
def data_fetch(name: Annotated[str, typer.Argument(help="dataset name (vislang data list)")]) -> None:
    """Download (or copy from VISLANG_MIRROR), verify and extract a dataset into the cache."""
    from vislang.data.registry import create_dataset

    ds = create_dataset(name)
    sizes = ", ".join(f"{split} {len(s):,}" for split, s in ds.splits.items())
    what = f"{ds.num_classes} classes" if hasattr(ds, "num_classes") else f"{ds.num_captions:,} captions"  # caption sets
    console.print(f"{name}: {what}; {sizes}")


@models_app.command("list")
@cli_errors
def models_list(task: Annotated[str | None, typer.Option(help="image")] = None) -> None:
    """List registered models and their options."""
    from vislang.models import MODELS

    table = Table(title="models")
    for col in ("name", "task", "description", "options"):
        table.add_column(col)
    skip = {"num_classes", "in_channels", "image_size", "vocab_size", "feature_dim", "grid_positions", "embeddings"}
    for e in MODELS.entries(**({"task": task} if task else {})):
        opts = ", ".join(f"{k}={p.default!r}" for k, p in e.parameters().items() if k not in skip)
        table.add_row(e.name, str(e.meta.get("task")), e.doc, opts)
    console.print(table)


@app.command()
@cli_errors
def explain(
    run: Annotated[Path, typer.Argument(help="run directory")],
    inputs: Annotated[list[Path] | None, typer.Option("--inputs", "-i", help="image files to explain (default: one per class from --split)")] = None,
    method: Annotated[list[str] | None, typer.Option("--method", "-m", help="saliency, ig, gradcam, activations, max_activating, errors or all (repeatable)")] = None,
    layer: Annotated[list[str] | None, typer.Option("--layer", "-l", help="layer name for activations / max_activating (default: the Grad-CAM layer)")] = None,
    channels: Annotated[str | None, typer.Option(help="channels to show for max_activating, e.g. 0-15,32")] = None,
    split: Annotated[str | None, typer.Option(help="split to search (default: val, else the eval split)")] = None,
    top_k: Annotated[int | None, typer.Option(help="images per channel (max_activating); texts or images explained (text, captioning)")] = None,
) -> None:
    """Explain a trained run: attributions, activations, max-activating images, errors → RUN/explain/."""
    from vislang.explain import explain_run
    from vislang.report.html import write_report_safely

    paths = explain_run(run, inputs=list(inputs or []), methods=list(method or []), layers=list(layer or []),
                        channels=channels, split=split, top_k=top_k)
    for path in paths:
        console.print(f"wrote {path}", soft_wrap=True, highlight=False)
    report = write_report_safely(run)
    console.print(f"explanations in [bold]{run / 'explain'}[/]" + (f"; report updated: {report}" if report else ""),
                  soft_wrap=True)


@app.command()
@cli_errors
def report(
    run: Annotated[Path, typer.Argument(help="run directory")],
    output: Annotated[Path | None, typer.Option(help="where to write the HTML (default RUN/report.html)")] = None,
) -> None:
    """Write one self-contained HTML report of a run (opens offline)."""
    from vislang.report.html import write_report

    console.print(f"report: [bold]{write_report(run, output)}[/]", soft_wrap=True)


@app.command()
@cli_errors
def compare(
    runs: Annotated[list[Path], typer.Argument(help="two or more run directories")],
    metric: Annotated[str | None, typer.Option(help="rank by this metric, e.g. test/accuracy or best:val/loss")] = None,
    output: Annotated[Path, typer.Option(help="HTML file to write")] = Path("compare.html"),
) -> None:
    """Leaderboard of runs (metric, params, time, throughput, config differences) + overlaid curves."""
    from vislang.report.compare import compare_runs, rich_table

    result = compare_runs(runs, metric, output)
    console.print(rich_table(result))
    console.print(f"written: {result.html}" + (f", {result.curves}" if result.curves else ""), soft_wrap=True)


@app.command()
@cli_errors
def cv(
    config: Annotated[Path, typer.Argument(help="experiment YAML")],
    folds: Annotated[int, typer.Option(help="number of folds")] = 5,
    jobs: Annotated[int, typer.Option(help="folds trained in parallel processes")] = 1,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="override a key: train.lr=0.01")] = None,
) -> None:
    """K-fold cross-validation: each fold a normal run; mean ± std of every metric (resumable)."""
    from vislang.config import load_config
    from vislang.tune.cv import cv_dir, run_cv, summary_table

    cfg = load_config(config, set_)
    summary = run_cv(cfg, folds=folds, jobs=jobs, console=console)
    console.print(summary_table(summary, f"{cfg.name}: {folds}-fold cross-validation"))
    console.print(f"summary: {cv_dir(cfg, folds) / 'cv_summary.json'}", soft_wrap=True)


@app.command()
@cli_errors
def sweep(
    config: Annotated[Path, typer.Argument(help="experiment YAML with a sweep: section")],
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (default sqlite in the sweep folder)")] = None,
    worker: Annotated[bool, typer.Option(help="join an existing study as one more worker")] = False,
    trials: Annotated[int | None, typer.Option(help="total trials of the study (overrides sweep.n_trials)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="override a key: train.epochs=5")] = None,
) -> None:
    """Hyperparameter sweep with Optuna (pruning, SQLite storage, resumable, several workers)."""
    from vislang.config import load_config
    from vislang.tune.sweep import run_sweep

    result = run_sweep(load_config(config, set_), storage=storage, worker=worker, n_trials=trials, source=str(config))
    best = result.study.best_trial if result.best_config else None
    if best is not None:
        console.print(f"best: trial {best.number}, value {best.value:.4f}, {best.params}", highlight=False)
    console.print(f"best recipe: {result.best_config}\nreport: {result.report}", soft_wrap=True)


def main() -> None:
    from vislang.system import tune_malloc

    tune_malloc()  # every command: training, evaluation, predict, explain, the feature passes
    app()

