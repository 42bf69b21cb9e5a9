"""End to end on real labelled sentences (the SST-2 sample packaged for the quickstart): train, evaluate,
predict (--text and a file of lines), the run's vocabulary, explanations, same seed → same metrics."""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vislang.cli import app

runner = CliRunner()
ASSETS = Path(str(resources.files("vislang") / "assets"))


def write_config(folder: Path, model: dict, name: str = "tiny") -> Path:
    cfg = {
        "name": name, "task": "text_classification", "seed": 1, "output_dir": str(folder / "runs"),
        "data": {"dataset": "text_file", "path": str(ASSETS / "sst2_sample_train.tsv"),
                 "test_path": str(ASSETS / "sst2_sample_test.tsv"), "quoting": "none", "val_fraction": 0.2,
                 "batch_size": 32, "subset": {"train": 300}},
        "model": model,
        "train": {"epochs": 2, "lr": 0.003, "threads": 2},
        "eval": {"split": "test", "explain": 6, "ig_steps": 8},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("text")
    result = runner.invoke(app, ["train", str(write_config(folder, {"name": "attention", "embed_dim": 32, "hidden_size": 32}))])
    assert result.exit_code == 0, result.output
    return folder / "runs" / "tiny"


def test_run_directory(trained):
    info = json.loads((trained / "data.json").read_text())
    assert info["classes"] == ["negative", "positive"]
    assert info["split_sizes"] == {"train": 240, "test": 200, "val": 60}
    assert info["vocab"][:2] == ["<pad>", "<unk>"] and len(info["vocab"]) == info["vocab_size"] > 500
    assert info["tokenizer"]["settings"]["hashtags"] == "split"
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["test"]["n"] == 200 and 0 <= metrics["test"]["accuracy"] <= 1
    with (trained / "predictions_test.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 200 and rows[0]["text"].startswith("a gob of drivel")
    page = (trained / "explain" / "words.html").read_text()
    assert "correct (" in page and "wrong (" in page and "attention" in page and 'class="w"' in page


def test_predict_text_and_file(trained, tmp_path):
    result = runner.invoke(app, ["predict", str(trained), "--text", "a gorgeous , witty , seductive movie .",
                                 "--text", "¡Qué asco de película! 😡", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    assert result.output.count("words (attention)") == 2 and "seductive" in result.output
    lines = tmp_path / "lines.txt"
    lines.write_text("the worst film of the year\n\nan unforgettable , moving film\n")
    result = runner.invoke(app, ["predict", str(trained), str(lines)])
    assert result.exit_code == 0, result.output
    assert result.output.count("words (") == 2


def test_predict_needs_text(trained):
    result = runner.invoke(app, ["predict", str(trained)])
    assert result.exit_code == 1 and "Give texts to classify" in result.output


def test_evaluate_another_split_is_reproducible(trained, monkeypatch):
    import torch

    before = json.loads((trained / "metrics.json").read_text())["test"]
    (trained / "explain" / "words.html").unlink()
    loads, torch_load = [], torch.load

    def counting_load(f, *args, **kwargs):
        loads.append(Path(f).name)
        return torch_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    import vislang.evaluate

    passes, predict_split = [], vislang.evaluate.predict_split

    def counting_predict(task, loader):
        passes.append(loader)
        return predict_split(task, loader)

    monkeypatch.setattr(vislang.evaluate, "predict_split", counting_predict)
    result = runner.invoke(app, ["evaluate", str(trained), "--split", "test"])
    assert result.exit_code == 0, result.output
    after = json.loads((trained / "metrics.json").read_text())["test"]
    assert after["accuracy"] == before["accuracy"] and after["confusion_matrix"] == before["confusion_matrix"]
    assert (trained / "explain" / "words.html").is_file()  # the explanations are written again
    assert loads == ["best.ckpt"]  # scoring and explaining share one read of the checkpoint
    assert len(passes) == 1  # ... and one pass of the model over the split: the explanations reuse its predictions


def test_same_seed_same_metrics(trained, tmp_path):
    result = runner.invoke(app, ["train", str(write_config(tmp_path, {"name": "attention", "embed_dim": 32, "hidden_size": 32}))])
    assert result.exit_code == 0, result.output
    a = json.loads((trained / "metrics.json").read_text())["val"]["accuracy"]
    b = json.loads((tmp_path / "runs" / "tiny" / "metrics.json").read_text())["val"]["accuracy"]
    assert a == b


def test_wrong_model_family_for_text(tmp_path):
    result = runner.invoke(app, ["train", str(write_config(tmp_path, {"name": "resnet"}))])
    assert result.exit_code == 1 and "is not a text model (it is for image); text models:" in result.output
