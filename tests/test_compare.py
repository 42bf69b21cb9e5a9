"""vislang compare: leaderboard order, config differences, curves and HTML; clear errors for runs of
different tasks and unknown metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vislang.cli import app
from vislang.config import load_config
from vislang.errors import VislangError
from vislang.report.compare import compare_runs


@pytest.fixture(scope="module")
def runs(small_image_run, tmp_path_factory) -> list[Path]:
    """The small quickstart run and the same experiment with another learning rate and dropout."""
    from vislang.run import train

    cfg = load_config(small_image_run / "config.yaml", ["name=low_lr", "train.lr=0.005", "model.dropout=0.0",
                                                        f"output_dir={tmp_path_factory.mktemp('compare')}"])
    return [small_image_run, train(cfg, quiet=True)]


def test_leaderboard_sorted_with_differences(runs, tmp_path):
    result = compare_runs(runs, output=tmp_path / "cmp.html")
    assert result.metric == "test/accuracy"
    accs = [r.metrics["test/accuracy"] for r in result.runs]
    assert accs == sorted(accs, reverse=True)
    assert result.keys == ["model.dropout", "train.lr"]  # name/output_dir differ too, but say nothing
    for r in result.runs:
        assert r.params and r.train_time_s and r.images_per_s > 0
    html = result.html.read_text()
    assert result.curves.is_file() and "data:image/png;base64," in html and "train.lr" in html
    # a loss ranks lowest first
    by_loss = compare_runs(runs, metric="best:val/loss", output=tmp_path / "loss.html")
    losses = [r.metrics["best:val/loss"] for r in by_loss.runs]
    assert losses == sorted(losses)


def test_curves_name_what_differs_and_show_training_beside_validation(runs, tmp_path):
    import matplotlib.pyplot as plt

    from vislang.report.compare import curves_figure

    result = compare_runs(runs, metric="val/accuracy", output=tmp_path / "cmp.html")
    fig = curves_figure(result.runs, result.metric, result.keys)
    loss_ax, acc_ax = fig.axes
    names = {r.name: r for r in result.runs}
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == [
        f"{r.name}: model.dropout={r.differing['model.dropout']}, train.lr={r.differing['train.lr']}"
        for r in result.runs]
    assert "low_lr: model.dropout=0.0, train.lr=0.005" in [t.get_text() for t in loss_ax.get_legend().get_texts()]
    for ax, col in ((loss_ax, "loss"), (acc_ax, "acc")):
        assert ax.get_title() == f"val/{col} (solid), train/{col} (dashed)"
        solid = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert len(solid) == len(dashed) == 2
        for val_line, train_line, run in zip(solid, dashed, result.runs):
            assert train_line.get_color() == val_line.get_color()  # a run's two curves share its colour
            history = names[run.name].history
            assert list(train_line.get_ydata()) == [row[f"train/{col}"] for row in history]
    plt.close(fig)


def test_cli_prints_the_table(runs, tmp_path):
    out = tmp_path / "c.html"
    result = CliRunner().invoke(app, ["compare", *map(str, runs), "--metric", "f1_macro", "--output", str(out)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "ranked by test/f1_macro" in result.output and "low_lr" in result.output and out.is_file()


def test_the_table_piped_to_a_file_is_not_cut_to_80_columns(runs, tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    result = subprocess.run([sys.executable, "-m", "vislang", "compare", *map(str, runs), "--output",
                             str(tmp_path / "c.html")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if line.startswith("┃"))
    assert "…" not in result.stdout and "low_lr" in result.stdout and "val/acc" in header


def test_runs_of_different_tasks_are_refused(runs, tmp_path):
    text_run = tmp_path / "text_run"
    shutil.copytree(runs[1], text_run)
    cfg = yaml.safe_load((text_run / "config.yaml").read_text())
    cfg["task"] = "text_classification"
    (text_run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(VislangError, match="different tasks") as err:
        compare_runs([runs[0], text_run], output=tmp_path / "x.html")
    assert "text_classification" in str(err.value) and "image_classification" in str(err.value)
    result = CliRunner().invoke(app, ["compare", str(runs[0]), str(text_run), "--output", str(tmp_path / "y.html")])
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_unknown_metric_lists_the_known_ones(runs, tmp_path):
    with pytest.raises(VislangError, match="Did you mean 'test/accuracy'") as err:
        compare_runs(runs, metric="test/acuracy", output=tmp_path / "z.html")
    assert "test/f1_macro" in str(err.value)
    assert json.loads((runs[0] / "metrics.json").read_text())["summary"]["test/accuracy"] > 0
