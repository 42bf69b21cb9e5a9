"""Explanations of a small CNN trained on real CIFAR-10 images: every method's files, the bounded-memory
max-activating search against brute force, receptive fields, layer errors, and the two sanity checks
(model randomisation, integrated-gradients completeness)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vislang.cli import app
from vislang.errors import VislangError
from vislang.explain import activations as act
from vislang.explain import explain_run
from vislang.explain.attributions import (
    attribute,
    ig_completeness_error,
    model_randomisation_correlation,
    rank_correlation,
)
from vislang.explain.image import ImageExplainer, parse_channels, parse_methods


@pytest.fixture(scope="module")
def run(small_image_run, tmp_path_factory):
    """The small quickstart run (conftest), copied so its explain/ folder is this module's own."""
    copy = tmp_path_factory.mktemp("explain") / small_image_run.name
    shutil.copytree(small_image_run, copy)
    return copy


@pytest.fixture(scope="module")
def explainer(run):
    return ImageExplainer(run, "test")


def test_explain_writes_every_method(run):
    paths = explain_run(run, progress=False, ig_steps=16, n_images=4)
    names = {p.name for p in paths}
    assert {"attributions.png", "activations_body.2.png", "max_activating_body.2.png", "errors_confident.png",
            "errors_confused_pairs.png"} <= names
    for p in paths:
        assert p.parent == run / "explain" and p.stat().st_size > 1000
    top = json.loads((run / "explain" / "max_activating_body.2.json").read_text())
    assert top["split"] == "val" and len(top["channels"]) == 32  # every channel of the layer
    for entry in top["channels"].values():
        assert len(entry["index"]) == 9 and entry["value"] == sorted(entry["value"], reverse=True)


def test_max_activating_one_pass_equals_brute_force(explainer):
    """Running top-k over small batches (merging every 7 images) = top-k of all activations at once."""
    model, layer = explainer.model, explainer.model.gradcam_layer
    images = explainer.dm.images["test"][:60]
    batches = [(images[i:i + 7], None) for i in range(0, len(images), 7)]
    tops = act.max_activating(model, batches, explainer.prepare, {"l": layer}, k=5, progress=False)["l"]
    full = act.activations(model, explainer.prepare(images), {"l": layer})["l"]  # [60, 32, 16, 16]
    best, where = full.flatten(2).max(2)
    expected = best.T.topk(5, dim=1)
    assert torch.allclose(tops.values, expected.values, atol=1e-5)
    assert torch.equal(tops.index, expected.indices)
    assert torch.equal(tops.pos, where.T.gather(1, expected.indices))
    assert tops.values.shape == (32, 5)  # memory: channels x k, whatever the number of images


def test_receptive_field_matches_the_architecture(explainer):
    """conv3 → pool2 → conv3 covers 3 → 4 → 8 pixels, moving 2 pixels per output step."""
    rf = act.receptive_field(explainer.model, explainer.model.gradcam_layer, (3, 32, 32))
    assert (rf.height, rf.width) == (8, 8) and rf.jump == (2.0, 2.0)
    assert rf.box(8, 8) == (rf.top, rf.top + 8, rf.left, rf.left + 8)
    assert rf.box(0, 0)[0] == 0 and rf.box(15, 15)[1] == 32  # clipped at the borders


def test_unknown_layer_lists_the_layers(run):
    with pytest.raises(VislangError) as err:
        explain_run(run, layers=["body.9"], methods=["activations"], progress=False)
    message = str(err.value)
    assert "body.9" in message and "body.0 (ConvBNAct)" in message and "head (Sequential)" in message
    result = CliRunner().invoke(app, ["explain", str(run), "--layer", "nope", "--method", "max_activating"])
    assert result.exit_code == 1 and "Layers:" in result.output and "Traceback" not in result.output


def test_method_and_channel_parsing():
    assert parse_methods(["ig,gradcam"]) == ["integrated_gradients", "gradcam"]
    assert parse_methods(None)[-1] == "errors"
    assert parse_channels("0-2,7", 8) == [0, 1, 2, 7]
    with pytest.raises(VislangError, match="Did you mean 'saliency'"):
        parse_methods(["salency"])
    with pytest.raises(VislangError, match="out of range"):
        parse_channels("3-9", 8)


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "gradcam"])
def test_model_randomisation_sanity_check(explainer, method):
    """Adebayo et al. 2018: explanations of the trained model must not survive randomising its weights."""
    images, _ = explainer.sample_images(10)
    x = explainer.prepare(images).float()
    with torch.no_grad():
        target = explainer.model(x).argmax(1)
    rho = model_randomisation_correlation(explainer.model, x, target, method, ig_steps=16)
    assert np.median(rho) < 0.5, rho
    # the check can fail: explanations of the same (trained) model computed twice agree
    again = rank_correlation(*[attribute(explainer.model, x, target, method, ig_steps=16) for _ in range(2)])
    assert np.nanmedian(again) > 0.99


def test_integrated_gradients_completeness(explainer):
    """Attributions sum to f(x) - f(baseline) within 1% (enough steps)."""
    images, _ = explainer.sample_images(4)
    x = explainer.prepare(images).float()
    with torch.no_grad():
        target = explainer.model(x).argmax(1)
    err = ig_completeness_error(explainer.model, x, target, n_steps=128)
    assert err.max() < 0.01, err
    coarse = ig_completeness_error(explainer.model, x, target, n_steps=2)
    assert coarse.max() > err.max()  # the measure is sensitive: two steps are visibly incomplete


def test_cli_explains_given_image_files(run, explainer, tmp_path):
    from PIL import Image

    files = []
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(explainer.dm.images["test"][i].permute(1, 2, 0).numpy()).save(path)
        files += ["--inputs", str(path)]
    result = CliRunner().invoke(app, ["explain", str(run), *files, "--method", "saliency", "--method", "gradcam"])
    assert result.exit_code == 0, result.output
    assert "attributions.png" in result.output and "report updated" in result.output
    assert "attributions.png" in (run / "report.html").read_text()
