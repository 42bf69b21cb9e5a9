"""Every text recipe in configs/ is a valid experiment whose model builds, and states its command and figure."""

from pathlib import Path

import pytest

from vislang.config import load_config
from vislang.data.registry import DATASETS
from vislang.tasks.text import build_task, check_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TEXT_RECIPES = [p for p in sorted(CONFIGS.glob("*.yaml")) if "task: text_classification" in p.read_text()]


def test_the_issue_recipes_exist():
    names = {p.stem for p in TEXT_RECIPES}
    assert {f"emoevent_es_polarity_{m}" for m in ("lstm", "gru", "textcnn", "attention", "transformer")} <= names
    assert {"emoevent_es_emotions_textcnn", "sst2_textcnn_glove", "sst2_bilstm_attention", "sst2_transformer"} <= names


@pytest.mark.parametrize("path", TEXT_RECIPES, ids=lambda p: p.stem)
def test_text_recipe_is_valid_and_documented(path):
    cfg = load_config(path)
    assert cfg.name == path.stem and DATASETS.get(cfg.data.dataset).meta["task"] == "text"
    check_config(cfg)
    info = {"classes": ["a", "b"], "vocab_size": 50, "class_counts": {"train": [3, 1]},
            "embeddings": {"dim": 100} if cfg.data.embeddings.source else None}
    task = build_task(cfg, info)
    assert sum(p.numel() for p in task.model.parameters()) > 0
    header = path.read_text().split("\nname:")[0]
    assert f"vislang train configs/{path.name}" in header and "Reached here" in header


def test_quickstart_text_asset():
    from importlib import resources

    asset = resources.files("vislang") / "assets" / "quickstart_text.yaml"
    with resources.as_file(asset) as p:
        cfg = load_config(p)
    assert Path(cfg.data.path).is_file() and Path(cfg.data.test_path).is_file()
    check_config(cfg)
