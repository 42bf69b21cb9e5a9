"""The experiment file: defaults, overrides, and errors that name the key, the file and the fix."""

from pathlib import Path

import pytest
import yaml

from vislang.config import load_config, save_config
from vislang.errors import VislangError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_defaults_are_explicit_and_round_trip(tmp_path):
    cfg = load_config(write(tmp_path, "name: a\nmodel: {name: resnet, depth: 18}\n"))
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, out)
    saved = yaml.safe_load(out.read_text())
    # every default is written, so the run can be re-created from this file alone
    assert saved["train"]["lr"] == cfg.train.lr and "augment" in saved["data"]
    assert saved["model"] == {"name": "resnet", "init_from": None, "depth": 18}
    assert load_config(out) == cfg


def test_set_overrides_any_key_with_typed_values(tmp_path):
    cfg = load_config(
        write(tmp_path, "model: {name: resnet}\n"),
        ["train.lr=0.01", "model.depth=34", "data.augment.flip=true", "data.image_size=[48, 64]"],
    )
    assert cfg.train.lr == 0.01 and cfg.model.kwargs() == {"depth": 34}
    assert cfg.data.augment.flip is True and cfg.data.image_size == (48, 64)


def test_a_recipes_subset_is_dropped_with_null_or_an_empty_mapping(tmp_path):
    path = write(tmp_path, "model: {name: cnn}\ndata: {subset: {train: 2000, test: 500}}\n")
    assert load_config(path).data.subset == {"train": 2000, "test": 500}
    assert load_config(path, ["data.subset=null"]).data.subset == {}
    assert load_config(path, ["data.subset={}"]).data.subset == {}
    assert load_config(path, ["data.subset={train: 100}"]).data.subset == {"train": 100}


def test_unknown_key_names_key_file_and_closest(tmp_path):
    path = write(tmp_path, "train:\n  learning_rate: 0.1\n  epoch: 3\n")
    with pytest.raises(VislangError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "train.epoch" in msg and "Did you mean 'epochs'" in msg


def test_unknown_override_key_is_an_error(tmp_path):
    with pytest.raises(VislangError, match=r"data.batchsize.*Did you mean 'batch_size'"):
        load_config(write(tmp_path, "name: x\n"), ["data.batchsize=64"])


def test_bad_value_names_the_key(tmp_path):
    with pytest.raises(VislangError, match=r"train.optimizer"):
        load_config(write(tmp_path, "train: {optimizer: rmsprop}\n"))
    with pytest.raises(VislangError, match=r"train.epochs"):
        load_config(write(tmp_path, "train: {epochs: 0}\n"))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(VislangError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(VislangError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(VislangError, match="key.path=value"):
        load_config(None, ["train.lr"])


def test_relative_data_path_resolves_against_config_folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    cfg = load_config(write(tmp_path, "data: {dataset: image_folder, path: imgs}\n"))
    assert Path(cfg.data.path) == (tmp_path / "imgs").resolve()


def test_unknown_task_names_the_closest_task(tmp_path):
    path = write(tmp_path, "task: image_clasification\n")
    with pytest.raises(VislangError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "image_clasification" in msg and "image_classification" in msg
