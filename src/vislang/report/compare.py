"""``vislang compare RUN RUN ...``: a leaderboard of runs of one task, their overlaid learning curves and
the config keys that differ between them; printed as a Rich table and written as one HTML file.

It reads run directories only (config.yaml, metrics.json, run.json, history.csv), so it works for any
task and for runs made by ``vislang cv`` and ``vislang sweep``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vislang.errors import VislangError, did_you_mean
from vislang.io import atomic_save, atomic_write_text

IGNORED_KEYS = {"name", "output_dir"}  # always differ, say nothing about the experiment


@dataclass
class RunSummary:
    """What a comparison needs from one run directory."""

    path: Path
    task: str
    config: dict[str, Any]
    metrics: dict[str, float]
    history: list[dict[str, Any]]
    params: int | None = None
    train_time_s: float | None = None
    images_per_s: float | None = None
    status: str | None = None
    differing: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 0.1}} → {'train.lr': 0.1} (lists kept as values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def read_run(run_dir: Path) -> RunSummary:
    """A run's config, final scalar metrics (metrics.json 'summary', plus best per-epoch values of the
    history as ``best:<column>``), size, time and throughput."""
    import json

    from vislang.report.html import metric_mode, read_history

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise VislangError(f"{run_dir} is not a vislang run directory (it has no config.yaml).")
    cfg = yaml.safe_load(cfg_path.read_text()) or {}

    def load(name: str) -> dict[str, Any]:
        try:
            return json.loads((run_dir / name).read_text())
        except (OSError, ValueError):
            return {}

    metrics, run = load("metrics.json"), load("run.json")
    history = read_history(run_dir / "history.csv")
    scalars = {k: float(v) for k, v in (metrics.get("summary") or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("params", "train_time_s")}
    if not scalars:  # a task without a summary: take each split's scalar metrics
        for split, m in metrics.items():
            if isinstance(m, dict):
                scalars.update({f"{split}/{k}": float(v) for k, v in m.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n"})
    for col in {k for row in history for k in row if k.startswith("val/")}:
        values = [row[col] for row in history if row.get(col) is not None]
        if values:
            scalars[f"best:{col}"] = min(values) if metric_mode(col) == "min" else max(values)
    rates = [row["images_per_s"] for row in history if row.get("images_per_s")]
    return RunSummary(run_dir, str(cfg.get("task", "image_classification")), cfg, scalars, history,
                      params=run.get("params"), train_time_s=run.get("train_time_s"),
                      images_per_s=sum(rates) / len(rates) if rates else None, status=run.get("status"))


def default_metric(runs: list[RunSummary]) -> str:
    """The first of the usual headline metrics every run has (eval split accuracy, CIDEr, ...)."""
    common = set.intersection(*(set(r.metrics) for r in runs)) if runs else set()
    split = (runs[0].config.get("eval") or {}).get("split", "test")
    for name in ("accuracy", "cider", "bleu4", "f1_macro"):
        for key in (f"{split}/{name}", f"val/{name}"):
            if key in common:
                return key
    candidates = sorted(common)
    if not candidates:
        raise VislangError("The runs have no metric in common to rank them by (are they finished?).")
    return candidates[0]


def resolve_metric(runs: list[RunSummary], metric: str | None) -> str:
    if metric is None:
        return default_metric(runs)
    common = set.intersection(*(set(r.metrics) for r in runs))
    split = (runs[0].config.get("eval") or {}).get("split", "test")
    for key in (metric, f"{split}/{metric}", f"best:{metric}"):
        if key in common:
            return key
    raise VislangError(f"Metric '{metric}' is not recorded by every run.{did_you_mean(metric, common)} "
                       f"Metrics they all have: {', '.join(sorted(common))}.")


def differing_keys(runs: list[RunSummary]) -> list[str]:
    flat = [flatten(r.config) for r in runs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    return [k for k in keys if k not in IGNORED_KEYS and len({repr(f.get(k)) for f in flat}) > 1]


def _metric_mode(metric: str) -> str:
    from vislang.report.html import metric_mode

    return metric_mode(metric.removeprefix("best:"))


@dataclass
class Comparison:
    runs: list[RunSummary]
    metric: str
    keys: list[str]
    html: Path | None = None
    curves: Path | None = None


def compare_runs(run_dirs: list[Path], metric: str | None = None, output: Path | None = None) -> Comparison:
    """Rank runs by ``metric`` (best first); write the HTML leaderboard and the overlaid curves PNG."""
    if len(run_dirs) < 2:
        raise VislangError("Give at least two run directories to compare.")
    runs = [read_run(Path(d)) for d in run_dirs]
    tasks = {r.task for r in runs}
    if len(tasks) > 1:
        listing = ", ".join(f"{r.path} ({r.task})" for r in runs)
        raise VislangError(f"Runs of different tasks cannot be compared: {listing}. "
                           "Compare runs of one task at a time.")
    metric = resolve_metric(runs, metric)
    sign = 1 if _metric_mode(metric) == "min" else -1
    runs.sort(key=lambda r: sign * r.metrics[metric] if not math.isnan(r.metrics[metric]) else math.inf)
    keys = differing_keys(runs)
    for r in runs:
        flat = flatten(r.config)
        r.differing = {k: flat.get(k) for k in keys}
    result = Comparison(runs, metric, keys)
    output = Path(output or "compare.html")
    result.curves = curves_plot(runs, metric, output.with_name(output.stem + "_curves.png"), keys)
    result.html = write_html(result, output)
    return result


def leaderboard_rows(result: Comparison) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the leaderboard (also the Rich table's)."""
    others = [m for m in ("test/accuracy", "val/accuracy", "test/f1_macro", "test/roc_auc_ovr", "test/cider",
                          "test/bleu4") if m != result.metric and all(m in r.metrics for r in result.runs)][:3]
    header = ["#", "run", result.metric, *others, "params", "train time (s)", "images/s", *result.keys]
    rows = []
    for i, r in enumerate(result.runs, 1):
        rows.append([i, r.name, r.metrics[result.metric], *[r.metrics[m] for m in others], r.params,
                     r.train_time_s, round(r.images_per_s) if r.images_per_s else None,
                     *[_short(r.differing[k]) for k in result.keys]])
    return header, rows


def _short(v: Any) -> str:
    text = v if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()
    return text if len(text) <= 40 else text[:37] + "..."


def curve_label(run: RunSummary, keys: list[str]) -> str:
    """A run's legend entry: its name and the config values that set it apart (``trial_002: train.lr=0.1``)."""
    values = ", ".join(f"{k}={_short(run.differing[k])}" for k in keys[:3] if k in run.differing)
    return f"{run.name}: {values}" if values else run.name


def curves_figure(runs: list[RunSummary], metric: str, keys: list[str] | None = None) -> Any:
    """Validation loss and the validation metric per epoch, one colour per run (solid), with the run's
    training curve of the same quantity dashed in the same colour where the history has it: the gap
    between the two is what a regularisation comparison (dropout, weight decay, augmentation) is about."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vislang.report.plots import epoch_axis

    cols = {k for r in runs for row in r.history for k in row if k.startswith("val/")}
    if not cols:
        return None
    base = metric.removeprefix("best:").split("/")[-1]
    second = next((c for c in (f"val/{base}", "val/acc", "val/cider", "val/f1_macro") if c in cols),
                  next((c for c in sorted(cols) if c != "val/loss"), None))
    panels = [c for c in ("val/loss", second) if c in cols]
    def points(run: RunSummary, col: str) -> list[tuple[int, Any]]:
        return [(int(row["epoch"]) + 1, row[col]) for row in run.history if row.get(col) is not None]

    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.2), squeeze=False)
    for ax, col in zip(axes[0], panels):
        train_col = "train/" + col.split("/", 1)[1]
        dashed = False
        for r in runs:
            pts = points(r, col)
            if not pts:
                continue
            (line,) = ax.plot(*zip(*pts), "-o", ms=3, lw=1.4, label=curve_label(r, keys or []))
            train = points(r, train_col)
            if train:
                ax.plot(*zip(*train), "--", lw=1.0, color=line.get_color(), alpha=0.8)
                dashed = True
        epoch_axis(ax)
        ax.set_ylabel(col.split("/", 1)[1] if dashed else col)
        if dashed:
            ax.set_title(f"{col} (solid), {train_col} (dashed)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def curves_plot(runs: list[RunSummary], metric: str, path: Path, keys: list[str] | None = None) -> Path | None:
    """``curves_figure`` saved as a PNG (None when no run logged validation metrics)."""
    import matplotlib.pyplot as plt

    fig = curves_figure(runs, metric, keys)
    if fig is None:
        return None
    atomic_save(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
    return path


def write_html(result: Comparison, path: Path) -> Path:
    from vislang import __version__
    from vislang.report.html import Section, _table, image_block, render

    header, rows = leaderboard_rows(result)
    sections = [Section("leaderboard", "Leaderboard", [_table(header, rows)],
                        note=f"sorted by {result.metric} ({'lower' if _metric_mode(result.metric) == 'min' else 'higher'} is better)")]
    if result.curves:
        sections.append(Section("curves", "Learning curves", [image_block([result.curves])]))
    if result.keys:
        diff = _table(["key", *[r.name for r in result.runs]],
                      [[k, *[_short(r.differing[k]) for r in result.runs]] for k in result.keys])
        sections.append(Section("config-differences", "Config differences", [diff]))
    sections.append(Section("runs", "Runs", [_table(["run", "path", "status"],
                                                    [[r.name, str(r.path.resolve()), r.status] for r in result.runs])]))
    html = render("report.html.j2", title=f"vislang compare: {len(result.runs)} runs", sections=sections,
                  subtitle=f"{result.runs[0].task} · ranked by {result.metric}", version=__version__,
                  run_dir=", ".join(r.name for r in result.runs), written=time.strftime("%Y-%m-%d %H:%M"))
    atomic_write_text(path, html)
    return path


def rich_table(result: Comparison) -> Any:
    from rich.table import Table

    header, rows = leaderboard_rows(result)
    table = Table(title=f"{len(result.runs)} runs ranked by {result.metric}")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 1 or i >= len(header) - len(result.keys) else "right")
    from vislang.report.html import _fmt

    for row in rows:
        table.add_row(*[_fmt(c) for c in row])
    return table
