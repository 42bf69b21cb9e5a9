"""k-fold cross-validation: the image data module's folds, the summary, and resuming an interrupted CV."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from vislang.config import build_config
from vislang.data.datamodule import ImageDataModule
from vislang.errors import VislangError
from vislang.tune.cv import fold_status, run_cv

CV = """
name: cvtiny
seed: 2
data:
  dataset: cifar10_sample
  subset: {train: 300, test: 100}
  batch_size: 64
model:
  name: cnn
  channels: [[8], [16]]
train:
  epochs: 1
  threads: 2
"""


def config(tmp_path, **data):
    raw = yaml.safe_load(CV)
    raw["output_dir"] = str(tmp_path)
    raw["data"].update(data)
    return build_config(raw)


def test_folds_partition_train_stratified(tmp_path):
    val_sets, test_sets, train_all = [], [], None
    for fold in range(3):
        dm = ImageDataModule(config(tmp_path, cv_folds=3, cv_fold=fold).data, seed=2, progress=False)
        dm.setup()
        assert dm.split_sizes["train"] + dm.split_sizes["val"] == 300
        counts = np.array(dm.class_counts["val"])
        assert counts.max() - counts.min() <= 1  # stratified: 10 per class
        val_sets.append({bytes(x.numpy()) for x in dm.images["val"]})
        test_sets.append(dm.labels["test"].tolist())
        pool = {bytes(x.numpy()) for x in dm.images["train"]} | val_sets[-1]
        train_all = train_all or pool
        assert pool == train_all  # every fold splits the same 300 images
    assert all(not (a & b) for i, a in enumerate(val_sets) for b in val_sets[i + 1:])  # disjoint folds
    assert set().union(*val_sets) == train_all
    assert test_sets[0] == test_sets[1] == test_sets[2]  # test untouched


def test_fold_keys_are_validated(tmp_path):
    with pytest.raises(VislangError, match="cv_folds and cv_fold go together"):
        config(tmp_path, cv_fold=1)
    with pytest.raises(VislangError, match="must be below cv_folds"):
        config(tmp_path, cv_folds=3, cv_fold=3)


def test_cv_summary_and_resume(tmp_path):
    cfg = config(tmp_path)
    summary = run_cv(cfg, folds=2)
    root = tmp_path / "cvtiny_cv2"
    assert json.loads((root / "cv_summary.json").read_text()) == summary
    acc = summary["metrics"]["test/accuracy"]
    folds = [f["test/accuracy"] for f in summary["per_fold"]]
    assert acc["mean"] == pytest.approx(np.mean(folds)) and acc["std"] == pytest.approx(np.std(folds, ddof=1))
    assert "val/accuracy" in summary["metrics"]
    for i in range(2):
        assert yaml.safe_load((root / f"cvtiny_fold{i}" / "config.yaml").read_text())["data"]["cv_fold"] == i

    # interrupt fold 1 before its first checkpoint: it restarts; fold 0 (finished) is kept untouched
    kept = (root / "cvtiny_fold0" / "metrics.json").stat().st_mtime_ns
    run1 = root / "cvtiny_fold1"
    info = json.loads((run1 / "run.json").read_text()) | {"status": "running"}
    (run1 / "run.json").write_text(json.dumps(info))
    for ckpt in (run1 / "checkpoints").glob("*.ckpt"):
        ckpt.unlink()
    assert fold_status(run1) == "partial"
    again = run_cv(cfg, folds=2, jobs=2)  # the remaining fold in a child process
    assert (root / "cvtiny_fold0" / "metrics.json").stat().st_mtime_ns == kept
    assert fold_status(run1) == "finished" and (root / "fold1.log").is_file()
    assert again["per_fold"][1]["test/accuracy"] == pytest.approx(summary["per_fold"][1]["test/accuracy"])


def test_caption_folds_are_grouped_by_image(tmp_path):
    """Captioning CV folds split images, never the five captions of one image; test stays untouched."""
    from vislang.data.caption_datamodule import CaptionDataModule
    from vislang.data.registry import create_dataset
    from vislang.tune.cv import fold_config

    raw = {"name": "capcv", "task": "captioning", "output_dir": str(tmp_path),
           "data": {"dataset": "flickr8k_sample"}, "model": {"name": "show_tell"}}
    base = build_config(raw)
    dataset = create_dataset("flickr8k_sample")
    own = {img: caps for name in ("train", "val") for img, caps in zip(dataset.splits[name].images, dataset.splits[name].captions)}
    folds = []
    for fold in range(3):
        cfg = fold_config(base, 3, fold)
        assert (cfg.data.cv_folds, cfg.data.cv_fold) == (3, fold)
        splits = CaptionDataModule(cfg, seed=cfg.seed, progress=False)._carve(dict(dataset.splits))
        train, val = set(splits["train"].images), set(splits["val"].images)
        assert not train & val
        for split in (splits["train"], splits["val"]):  # every image keeps all its captions
            assert all(own[img] == caps for img, caps in zip(split.images, split.captions))
        assert splits["test"].images == dataset.splits["test"].images
        folds.append((train, val))
    pool = set(own)  # the dataset's train and val images, pooled
    assert all(t | v == pool for t, v in folds)
    vals = [v for _, v in folds]
    assert all(not (a & b) for i, a in enumerate(vals) for b in vals[i + 1:]) and set().union(*vals) == pool
    with pytest.raises(VislangError, match="cv_folds and cv_fold go together"):
        build_config({**raw, "data": {"dataset": "flickr8k_sample", "cv_fold": 1}})
