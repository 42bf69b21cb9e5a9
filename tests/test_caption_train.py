"""Captioning end to end on real Flickr8k photos shipped with vislang: train (cross-entropy, then a
self-critical epoch) → evaluate → predict, the run directory's files, and bad-input errors."""

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

runner = CliRunner()

TINY = {
    "name": "tiny_captions", "task": "captioning", "seed": 0,
    "data": {"dataset": "flickr8k_sample", "min_freq": 2, "batch_size": 16},
    "model": {"name": "caption_transformer", "d_model": 32, "num_layers": 1, "num_heads": 4, "ff_dim": 64},
    "train": {"epochs": 1, "lr": 2e-3, "scst": {"epochs": 1, "samples": 2, "top_k": 3, "temperature": 0.9}},
    "eval": {"beam": 2, "gallery": 2, "attention_maps": 1},
}


def _config(tmp_path: Path, **changes) -> Path:
    raw = json.loads(json.dumps(TINY))
    raw["output_dir"] = str(tmp_path / "runs")
    for key, value in changes.items():
        section, _, leaf = key.partition(".")
        raw.setdefault(section, {})[leaf] = value
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("caption_run")
    result = runner.invoke(app, ["train", str(_config(tmp))])
    assert result.exit_code == 0, result.output
    return tmp / "runs" / "tiny_captions"


def test_train_writes_a_complete_run(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["test"]
    assert test["n"] == 6 and test["beam"] == 2
    for key in ("bleu1", "bleu4", "rouge_l", "cider", "similarity"):
        assert isinstance(test[key], float)
    assert "test before scst" in metrics and (run_dir / "checkpoints" / "xe_best.ckpt").is_file()
    rows = [json.loads(line) for line in (run_dir / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(len(r["references"]) == 5 and "cider" in r["scores"] for r in rows)
    history = (run_dir / "history.csv").read_text()
    assert "val/cider" in history and "val/bleu4" in history and "train/reward" in history
    for name in ("gallery_best.png", "gallery_median.png", "gallery_worst.png", "loss.png", "caption_metrics.png"):
        assert (run_dir / "plots" / name).is_file(), name
    assert list((run_dir / "plots").glob("attention_*.png"))
    info = json.loads((run_dir / "data.json").read_text())
    assert info["split_sizes"] == {"train": 48, "val": 6, "test": 6} and info["vocab"][:4] == [
        "<pad>", "<start>", "<end>", "<unk>"]


def test_evaluate_with_beam_and_predict(run_dir, tmp_path):
    result = runner.invoke(app, ["evaluate", str(run_dir), "--split", "test", "--beam", "3"])
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["beam"] == 3
    assert "cider" in result.output
    images = [json.loads(line)["image"] for line in (run_dir / "captions.jsonl").read_text().splitlines()][:2]
    result = runner.invoke(app, ["predict", str(run_dir), *images, "--beam", "2"])
    assert result.exit_code == 0, result.output
    assert all(Path(p).name in result.output.replace("\n", "") for p in images)
    bad = runner.invoke(app, ["predict", str(run_dir), images[0], "--beam", "0"])
    assert bad.exit_code == 1 and "Beam size must be at least 1" in bad.output
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is not a picture")
    bad = runner.invoke(app, ["predict", str(run_dir), str(not_image)])
    assert bad.exit_code == 1 and "notes.jpg" in bad.output and "Traceback" not in bad.output
    bad = runner.invoke(app, ["predict", str(run_dir), str(tmp_path / "missing.jpg")])
    assert bad.exit_code == 1 and "does not exist" in bad.output


def test_an_unreadable_image_is_named_or_skipped(tmp_path):
    from vislang.data.caption_datamodule import CaptionDataModule
    from vislang.data.registry import create_dataset

    root = create_dataset("flickr8k_sample").root
    (tmp_path / "images").mkdir()
    rows = ["image,caption"]
    for i, p in enumerate(sorted((root / "images").iterdir())[:6]):
        shutil.copy(p, tmp_path / "images" / p.name)
        rows.append(f"images/{p.name},a photo of thing number {i % 2} here")
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not a jpeg at all")
    rows.append("images/broken.jpg,a photo of nothing at all")
    (tmp_path / "caps.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config(_config(tmp_path, **{"data.dataset": "caption_csv", "data.path": str(tmp_path / "caps.csv"),
                                           "data.val_fraction": 0.0, "data.test_fraction": 0.0}))
    with pytest.raises(VislangError, match="broken.jpg"):
        CaptionDataModule(cfg, progress=False).setup()
    cfg.data.skip_corrupt = True
    dm = CaptionDataModule(cfg, progress=False)
    dm.setup()
    assert dm.split_sizes == {"train": 6} and any("skipped 1 unreadable" in n for n in dm.notes)


def test_config_errors_are_clear(tmp_path):
    from vislang.run import check_model_config

    cfg = load_config(_config(tmp_path, **{"model.name": "cnn"}))
    with pytest.raises(VislangError, match="not a caption decoder"):
        check_model_config(cfg)
    cfg = load_config(_config(tmp_path, **{"model.hidden": 3}))
    with pytest.raises(VislangError, match="has no option 'hidden'"):
        check_model_config(cfg)
    with pytest.raises(VislangError, match="beam"):
        load_config(_config(tmp_path, **{"eval.beam": 0}))
    # the mean baseline needs other samples of the same image to compare with
    with pytest.raises(VislangError, match=r"train\.scst\.samples to 2 or more"):
        load_config(_config(tmp_path, **{"train.scst": {"epochs": 1, "samples": 1}}))
    assert load_config(_config(tmp_path, **{"train.scst": {"epochs": 1, "samples": 1, "baseline": "greedy"}}))


def test_encoder_features_follow_the_runs_precision(tmp_path):
    """The frozen encoder's cached grid is computed in the run's own precision, which keys the cache: a
    ``train.precision: 32`` run gets fp32 features, not the bf16 ones an earlier default run cached."""
    import torch

    from vislang.data.caption_datamodule import CaptionDataModule
    from vislang.data.features import STATS

    grids = {}
    for precision in ("bf16-mixed", "32"):
        cfg = load_config(_config(tmp_path, **{"train.precision": precision, "data.subset": {"test": 6}}))
        dm = CaptionDataModule(cfg, cfg.seed, progress=False)
        dm.setup("fit")
        grids[precision] = dm.inputs["test"][1].float()
    assert grids["32"].shape == grids["bf16-mixed"].shape
    # bf16 keeps 8 bits of mantissa: its features differ from fp32 ones well beyond the fp16 storage
    diff = (grids["32"] - grids["bf16-mixed"]).abs().max().item()
    assert diff > 1e-2, diff
    # ... yet they are the same features: each grid position's vector points the same way
    cosine = torch.nn.functional.cosine_similarity(grids["32"], grids["bf16-mixed"], dim=-1)
    assert cosine.mean() > 0.98, cosine.mean()
    before = dict(STATS)
    CaptionDataModule(cfg, cfg.seed, progress=False).setup("fit")  # fp32 again: every image from the cache
    assert STATS["computed"] == before["computed"] and STATS["reused"] > before["reused"]
