"""Image models: the shared interface, the registry's errors, sizes, and that they can learn."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vislang.errors import VislangError
from vislang.models import MODELS, create_model, list_models

# Small configs so that the whole file runs in seconds on 2 CPU cores.
SMALL = {
    "mlp": {"hidden": [64, 32]},
    "cnn": {"channels": [[8], [16, 16]], "hidden": [32]},
    "resnet": {"layers": [1, 1], "widths": [8, 16]},
    "vgg": {"layout": [8, "M", 16, "M"], "hidden": [16]},
    "fastnet": {"widths": [8, 16, 32], "stem_width": 12},
}
IMAGE_MODELS = sorted(SMALL)
NO_DROPOUT = {"mlp": {"dropout": 0.0}, "cnn": {"dropout": 0.0}, "vgg": {"dropout": 0.0},
              "resnet": {"stem": "imagenet"}, "fastnet": {}}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small(name: str, num_classes: int = 5, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=num_classes, **{**SMALL[name], **kwargs})


def test_registry_lists_image_models_with_docs():
    assert set(IMAGE_MODELS) <= set(list_models("image"))
    assert list_models("no-such-task") == []
    for name in IMAGE_MODELS:
        assert MODELS.get(name).doc, f"{name} has no docstring"


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_interface(name: str):
    model = small(name, in_channels=1, image_size=(28, 28)).eval()
    x = torch.randn(4, 1, 28, 28)
    assert model(x).shape == (4, 5)
    feats = model.features(x)
    assert feats.shape == (4, model.num_features)
    assert torch.allclose(model.head(feats), model(x), atol=1e-5)
    model.reset_classifier(3)
    assert model(x).shape == (4, 3)
    if name == "mlp":
        assert model.gradcam_layer is None
    else:
        layer = model.gradcam_layer
        assert isinstance(layer, nn.Module) and any(layer is m for m in model.modules())
        seen = []
        handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        model(x)
        handle.remove()
        assert len(seen) == 1 and len(seen[0]) == 4  # a spatial map [B, C, H, W]


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_backward_and_channels_last(name: str):
    model = small(name).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    out = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, expected, atol=1e-4)
    model.train()
    model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_unknown_model_and_option_name_the_closest():
    with pytest.raises(VislangError, match="Unknown model 'resnt'.*'resnet'"):
        create_model("resnt", num_classes=10)
    with pytest.raises(VislangError, match="no option 'dept'.*'depth'"):
        create_model("resnet", num_classes=10, dept=18)
    with pytest.raises(VislangError, match="'max'"):
        create_model("cnn", num_classes=10, pool="mx")
    with pytest.raises(VislangError, match="layout 'vgg61'.*vgg11, vgg13, vgg16, vgg19"):
        create_model("vgg", num_classes=10, layout="vgg61")


def test_resnet_config_errors():
    with pytest.raises(VislangError, match="same"):
        create_model("resnet", num_classes=10, layers=[2, 2, 2], widths=[64, 128])
    with pytest.raises(VislangError, match="depth"):
        create_model("resnet", num_classes=10, depth=20)
    with pytest.raises(VislangError, match="not both"):
        create_model("resnet", num_classes=10, depth=18, layers=[1, 1])


@pytest.mark.parametrize(("name", "cfg", "millions"), [
    ("resnet", {"depth": 18}, 11.17),  # the standard CIFAR ResNet-18
    ("resnet", {"depth": 50}, 23.52),
    ("resnet", {"depth": 18, "stem": "imagenet", "num_classes": 1000}, 11.69),  # torchvision resnet18
    ("vgg", {"layout": "vgg16", "hidden": []}, 14.73),  # VGG-16 conv layers + one 512x10 fc
    ("fastnet", {"widths": [128, 256, 512], "stem_width": 64, "stem_kernel": 3, "convs_per_stage": [3, 1, 3],
                 "residual": True}, 6.57),  # Page's ResNet-9
    ("fastnet", {"widths": [64, 256, 256]}, 1.97),  # airbench94's net
])
def test_parameter_counts(name: str, cfg: dict, millions: float):
    model = create_model(name, **{"num_classes": 10, **cfg})
    assert n_params(model) / 1e6 == pytest.approx(millions, abs=0.01)


def test_resnet_zero_init_and_depth_50_bottleneck():
    model = create_model("resnet", num_classes=10, layers=[1, 1], widths=[8, 16], block="bottleneck")
    assert model.num_features == 64
    last_bn = model.stages[0][0].branch[-1]
    assert isinstance(last_bn, nn.BatchNorm2d) and last_bn.weight.abs().sum() == 0


def test_fastnet_whitening_decorrelates_patches():
    model = create_model("fastnet", num_classes=10, widths=[8], stem_width=24)
    torch.manual_seed(0)
    images = torch.randn(64, 3, 16, 16) @ torch.randn(16, 16)  # correlated pixels
    model.init_whitening(images)
    conv = model.stem[0]
    out = nn.functional.conv2d(images, conv.weight[:12]).permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(out.T)
    assert torch.allclose(cov, torch.eye(12), atol=0.05)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_overfits_a_fixed_batch(name: str):
    torch.manual_seed(0)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 5, (64,))
    model = small(name, **NO_DROPOUT[name])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_fastnet_airbench_options_identity_convs_frozen_bn_scales_and_bias_lr():
    from vislang.config import ExperimentConfig
    from vislang.tasks.classification import ClassificationTask

    model = create_model("fastnet", num_classes=10, widths=[8, 16], stem_width=12,
                         freeze_bn_scale=True, dirac_init=True)
    conv = model.stages[0].rest[0][0]  # the stage's second conv: 8 -> 8 channels
    assert torch.equal(conv.weight[:, :, 1, 1], torch.eye(8)) and conv.weight.abs().sum() == 8
    x = torch.randn(2, 8, 5, 5)
    assert torch.allclose(conv(x), x)  # starts as the identity
    stage_bns = [m for m in model.stages.modules() if isinstance(m, nn.BatchNorm2d)]
    assert stage_bns and all(not bn.weight.requires_grad and bn.bias.requires_grad for bn in stage_bns)

    cfg = ExperimentConfig.model_validate({"train": {"lr": 0.5, "weight_decay": 1e-3, "bias_lr_mult": 64}})
    task = ClassificationTask(model, cfg, num_classes=10)
    groups = task._param_groups(cfg.train.weight_decay)
    biases = next(g for g in groups if g["params"][0].ndim <= 1)
    weights = next(g for g in groups if g["params"][0].ndim > 1)
    assert biases["lr"] == 0.5 * 64 and biases["weight_decay"] == 1e-3 / 64
    assert "lr" not in weights and weights["weight_decay"] == 1e-3
    assert not any(p is bn.weight for g in groups for p in g["params"] for bn in stage_bns)


def test_fastnet_airbench_stem_is_whitened_frozen_and_unnormalised():
    from vislang.config import ExperimentConfig
    from vislang.tasks.classification import ClassificationTask

    model = create_model("fastnet", num_classes=10, widths=[8, 16], stem_width=24, stem_bn=False, freeze_stem=True)
    conv = model.stem[0]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.stem) and conv.bias is not None
    torch.manual_seed(0)
    model.init_whitening(torch.randn(64, 3, 16, 16) @ torch.randn(16, 16))
    whitened = conv.weight.clone()
    cfg = ExperimentConfig.model_validate({"train": {"lr": 0.5, "weight_decay": 1e-3, "bias_lr_mult": 64}})
    task = ClassificationTask(model, cfg, num_classes=10)
    groups = task._param_groups(cfg.train.weight_decay)
    # the frozen filters are not optimised; the stem's conv bias learns at lr (the 64x is for BN shifts only)
    assert not any(p is conv.weight for g in groups for p in g["params"])
    stem_group = next(g for g in groups if any(p is conv.bias for p in g["params"]))
    assert stem_group.get("lr", 0.5) == 0.5
    opt = torch.optim.SGD([{k: v for k, v in g.items()} for g in groups], lr=0.5)
    loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,)))
    loss.backward()
    opt.step()
    assert torch.equal(conv.weight, whitened) and conv.bias.abs().sum() > 0
