"""What a sweep leaves behind: ``best_config.yaml`` (a ready recipe) and ``sweep_report.html``
(trials table, optimisation history, parameter importance, the trials' validation curves overlaid).
The plots are Optuna's own matplotlib visualisations."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import yaml  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from vislang.io import atomic_save, atomic_write_text  # noqa: E402


def write_best_config(sweep: Any) -> Path | None:
    """The best trial's full experiment as a recipe: ``<sweep dir>/best_config.yaml``."""
    from vislang.tune.sweep import _best, trial_config

    best = _best(sweep.study)
    if best is None:
        return None
    cfg = trial_config(sweep.base, best.params, f"{sweep.cfg.name}_best", sweep.cfg.output_dir, sweep.source)
    raw = cfg.to_dict()
    raw.pop("sweep", None)
    path = sweep.dir / "best_config.yaml"
    params = ", ".join(f"{k}={v!r}" for k, v in best.params.items())
    header = (f"# Best of sweep '{sweep.name}' ({len(sweep.study.trials)} trials): trial {best.number}, "
              f"{sweep.metric} = {best.value:.4f} ({sweep.direction})\n# with {params}\n"
              f"# Train it:  vislang train {path}\n")
    atomic_write_text(path, header + yaml.safe_dump(raw, sort_keys=False))
    return path


def _save_axes(ax: Any, path: Path) -> Path:
    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(7.5, 4.5)
    fig.tight_layout()
    atomic_save(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
    return path


def label_trial_curves(ax: Any, study: optuna.Study, metric: str) -> Any:
    """Optuna's intermediate-values plot says "Intermediate Value" per "Step" for "Trial0", "Trial1" ...:
    name the metric and the epoch, and give each trial's line its parameters (what a sweep compares)."""
    def fmt(v: Any) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    drawn = [t for t in study.trials if t.intermediate_values]
    lines = ax.get_lines()
    if len(lines) == len(drawn):  # one line per trial with values, in trial order (Optuna's drawing order)
        for line, t in zip(lines, drawn):
            params = ", ".join(f"{k}={fmt(v)}" for k, v in t.params.items())
            line.set_label(f"trial {t.number}: {params}" if params else f"trial {t.number}")
    from vislang.report.plots import epoch_axis

    ax.set_title(f"{metric} per epoch, one line per trial")
    epoch_axis(ax)
    ax.set_ylabel(metric)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, borderaxespad=0)
    return ax


def sweep_plots(study: optuna.Study, out: Path, metric: str = "objective") -> tuple[list[Path], list[str]]:
    """Optimisation history, parameter importance and intermediate values (PNG); notes on skipped plots."""
    import optuna.visualization.matplotlib as ovm

    paths, notes = [], []
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        if complete:
            paths.append(_save_axes(ovm.plot_optimization_history(study), out / "optimization_history.png"))
        varied = {k for t in complete for k in t.params if len({str(u.params.get(k)) for u in complete}) > 1}
        if len(complete) >= 2 and varied:
            try:
                paths.append(_save_axes(ovm.plot_param_importances(study), out / "param_importances.png"))
            except (RuntimeError, ValueError, ZeroDivisionError) as err:
                notes.append(f"parameter importance not available: {err}")
        else:
            notes.append("parameter importance needs at least two completed trials with different parameters")
        if any(t.intermediate_values for t in study.trials):
            curves = label_trial_curves(ovm.plot_intermediate_values(study), study, metric)
            paths.append(_save_axes(curves, out / "trial_curves.png"))
    return paths, notes


def write_sweep_report(sweep: Any) -> Path:
    """``<sweep dir>/sweep_report.html``: best trial, all trials, and the plots."""
    from vislang import __version__
    from vislang.report.html import Section, _table, image_block, render
    from vislang.tune.sweep import _best

    study = sweep.study
    paths, notes = sweep_plots(study, sweep.dir, sweep.metric)
    keys = list(sweep.spec.space)
    rows = []
    for t in study.trials:
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        rows.append([t.number, t.state.name.lower(), t.value, len(t.intermediate_values),
                     round(duration, 1) if duration else None, *[t.params.get(k) for k in keys],
                     t.user_attrs.get("run_dir", "")])
    counts = {s.name.lower(): sum(t.state == s for t in study.trials) for s in TrialState}
    sections = []
    best = _best(study)
    if best is not None:
        best_rows = [["trial", best.number], [sweep.metric, best.value], *[[k, v] for k, v in best.params.items()],
                     ["run", best.user_attrs.get("run_dir", "")], ["recipe", str(sweep.dir / "best_config.yaml")]]
        sections.append(Section("best", "Best trial", [_table(["", "value"], best_rows)],
                                note=f"{sweep.direction} {sweep.metric}; trials: "
                                     + ", ".join(f"{v} {k}" for k, v in counts.items() if v)))
    sections.append(Section("trials", "Trials", [_table(["trial", "state", "value", "epochs reported", "seconds",
                                                         *keys, "run"], rows)]))
    titles = {"optimization_history": "Optimisation history", "param_importances": "Parameter importance (fANOVA)",
              "trial_curves": f"Trials' curves: {sweep.metric} per epoch (pruned trials stop early)"}
    for path in paths:
        sections.append(Section(path.stem.replace("_", "-"), titles.get(path.stem, path.stem), [image_block([path])]))
    if notes:
        sections.append(Section("notes", "Notes", [_table(["note"], [[n] for n in notes])]))
    html = render("report.html.j2", title=f"vislang sweep {sweep.name}", sections=[s for s in sections if s.blocks],
                  subtitle=f"{sweep.cfg.task} · {sweep.spec.sampler} sampler · pruning "
                           f"{sweep.spec.pruner if sweep.spec.pruning else 'off'} · {sweep.url}",
                  version=__version__, run_dir=str(sweep.dir.resolve()), written=time.strftime("%Y-%m-%d %H:%M"))
    path = sweep.dir / "sweep_report.html"
    atomic_write_text(path, html)
    return path
