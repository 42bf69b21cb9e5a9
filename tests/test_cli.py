"""The command line as a user meets it: listings, fetching, the quickstart, errors without tracebacks."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from vislang.cli import app

runner = CliRunner()


def test_models_and_data_listings():
    models = runner.invoke(app, ["models", "list"])
    assert models.exit_code == 0
    for name in ("mlp", "cnn", "resnet", "vgg", "fastnet"):
        assert name in models.output
    data = runner.invoke(app, ["data", "list"])
    assert data.exit_code == 0
    for name in ("cifar10", "tinyimagenet30", "pneumoniamnist", "image_folder", "image_csv", "npz"):
        assert name in data.output


def test_data_fetch_packaged_sample_and_unknown_name():
    result = runner.invoke(app, ["data", "fetch", "cifar10_sample"])
    assert result.exit_code == 0, result.output
    assert "10 classes" in result.output and "train 5,000" in result.output and "test 1,000" in result.output
    bad = runner.invoke(app, ["data", "fetch", "cifar11"])
    assert bad.exit_code == 1 and "Did you mean 'cifar10'" in bad.output


def test_quickstart_trains_on_the_packaged_sample(tmp_path, monkeypatch):
    monkeypatch.delenv("VISLANG_MIRROR", raising=False)  # the sample ships with vislang: no mirror needed
    result = runner.invoke(app, ["quickstart", "--epochs", "1", "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "quickstart_cifar10"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["n"] == 1000 and metrics["test"]["accuracy"] > 0.2  # one epoch, 10 classes
    assert (run / "plots" / "confusion_test.png").is_file() and str(run) in result.output.replace("\n", "")


def test_predict_rejects_missing_and_corrupt_images(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = runner.invoke(app, ["predict", str(tmp_path / "no_run"), str(bad)])
    assert result.exit_code == 1 and "does not exist" in result.output


def test_train_light_writes_numbers_and_no_plots_then_evaluate_draws_them(tmp_path, vislang_env):
    from importlib import resources

    with resources.as_file(resources.files("vislang") / "assets" / "quickstart_image.yaml") as cfg:
        result = runner.invoke(app, ["train", str(cfg), "--light", "--set", f"output_dir={tmp_path}",
                                     "--set", "train.epochs=1", "--set", "data.subset={train: 300, test: 100}",
                                     "--set", "model.channels=[[8], [16]]"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "quickstart_cifar10"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["n"] == 100 and (run / "predictions_test.csv").is_file()
    assert not list(run.glob("plots/*.png")) and not (run / "report.html").exists()
    assert "vislang evaluate" in result.output.replace("\n", "")
    drawn = runner.invoke(app, ["evaluate", str(run)])
    assert drawn.exit_code == 0, drawn.output
    assert (run / "plots" / "confusion_test.png").is_file()
    assert json.loads((run / "metrics.json").read_text())["test"]["accuracy"] == metrics["test"]["accuracy"]
