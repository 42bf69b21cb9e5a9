"""The ``vislang`` command line: one small function per command, no logic of its own."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vislang.errors import VislangError

app = typer.Typer(help="Train, evaluate and compare image classifiers from one experiment file.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Datasets: list the registry, fetch into the cache.", no_args_is_help=True)
models_app = typer.Typer(help="Models: list the registry.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
console = Console()
err_console = Console(stderr=True)


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
    keys = ["accuracy", "top5_accuracy", "f1_macro", "f1_weighted", "roc_auc_ovr"]
    splits = [s for s in metrics if s != "summary" and isinstance(metrics[s], dict)]
    keys = [k for k in keys if any(k in metrics[s] for s in splits)]
    for k in keys:
        table.add_column(k, justify="right")
    for s in splits:
        table.add_row(s, *[f"{metrics[s][k]:.4f}" if k in metrics[s] else "-" for k in keys])
    return table


def _report_run(run_dir: Path) -> None:
    from vislang.run import read_json

    metrics = read_json(run_dir / "metrics.json")
    console.print(_metrics_table(metrics, f"run {run_dir}"))
    console.print(f"run directory: [bold]{run_dir}[/]  (plots in {run_dir / 'plots'})", soft_wrap=True)


@app.command()
@cli_errors
def train(
    config: Annotated[Path | None, typer.Argument(help="experiment YAML (or a run's config.yaml)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="override a key: train.lr=0.01")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue an interrupted run directory")] = None,
    devices: Annotated[int | None, typer.Option(help="data-parallel devices (DDP)")] = None,
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
    run_dir = run_train(cfg, resume=resume)
    if not is_ddp_worker():
        _report_run(run_dir)


@app.command()
@cli_errors
def evaluate(
    run: Annotated[Path, typer.Argument(help="run directory")],
    split: Annotated[str | None, typer.Option(help="split to score (default: the config's eval.split)")] = None,
    checkpoint: Annotated[str, typer.Option(help="best or last")] = "best",
) -> None:
    """Score a trained run on a split; updates metrics.json, predictions and plots."""
    from vislang.config import load_config
    from vislang.tasks import task_spec

    if not (run / "config.yaml").is_file():
        raise VislangError(f"{run} is not a vislang run directory (it has no config.yaml).")
    spec = task_spec(load_config(run / "config.yaml").task)
    metrics = spec.evaluate_run(run, [split] if split else None, checkpoint=checkpoint)
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

    if not (run / "config.yaml").is_file():
        raise VislangError(f"{run} is not a vislang run directory (it has no config.yaml).")
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
    intro = {"image": "a small CNN on 5,000 real CIFAR-10 images shipped with vislang"}
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
    console.print(f"{name}: {ds.num_classes} classes; {sizes}")


@models_app.command("list")
@cli_errors
def models_list(task: Annotated[str | None, typer.Option(help="image")] = None) -> None:
    """List registered models and their options."""
    from vislang.models import MODELS

    table = Table(title="models")
    for col in ("name", "task", "description", "options"):
        table.add_column(col)
    skip = {"num_classes", "in_channels", "image_size"}
    for e in MODELS.entries(**({"task": task} if task else {})):
        opts = ", ".join(f"{k}={p.default!r}" for k, p in e.parameters().items() if k not in skip)
        table.add_row(e.name, str(e.meta.get("task")), e.doc, opts)
    console.print(table)


def main() -> None:
    app()

