"""Every recipe in configs/ is a valid experiment whose model builds: a typo in a recipe fails here."""

import re
from pathlib import Path

import pytest

from vislang.config import load_config
from vislang.data.registry import DATASETS
from vislang.run import build_model, check_model_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_recipes():
    assert {"cifar10_mlp", "cifar10_cnn", "cifar10_resnet", "cifar10_fast", "tinyimagenet30_cnn"} <= {
        p.stem for p in RECIPES
    }


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_is_valid_and_documented(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert cfg.data.dataset in DATASETS
    check_model_config(cfg)
    if cfg.task == "image_classification":  # text and caption recipes build in their own tests
        size = 64 if cfg.data.dataset.startswith("tinyimagenet") else 32
        model = build_model(cfg, 10, (3, size, size))
        assert sum(p.numel() for p in model.parameters()) > 0
    header = path.read_text().split("\nname:")[0]
    assert re.search(r"vislang (train|sweep|cv) configs/", header) and "Reached here" in header
