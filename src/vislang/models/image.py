"""Image classifiers built from scratch: ``mlp``, ``cnn``, ``resnet``, ``vgg`` and ``fastnet``.

Every factory takes ``num_classes``, ``in_channels`` and ``image_size`` (filled in from the data)
plus its own config keywords. Every model returns logits ``[B, num_classes]`` and shares the
:class:`ImageClassifier` interface: ``features(x)`` (pooled ``[B, D]`` before the classifier),
``head``, ``reset_classifier(num_classes)`` and ``gradcam_layer`` (last conv block, or None).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from vislang.errors import VislangError, did_you_mean
from vislang.models.registry import register_model

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "gelu": nn.GELU,
    "silu": lambda: nn.SiLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.1, inplace=True),
    "elu": lambda: nn.ELU(inplace=True),
    "tanh": nn.Tanh,
}
VGG_LAYOUTS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
RESNET_DEPTHS: dict[int, tuple[str, list[int]]] = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
}


def _choice(option: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise VislangError(
            f"Invalid {option} '{value}'.{did_you_mean(value, choices)} Choose one of: {', '.join(choices)}."
        )
    return value


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name ('relu', 'gelu', 'silu', 'leaky_relu', 'elu', 'tanh')."""
    return ACTIVATIONS[_choice("activation", name, list(ACTIVATIONS))]()


def make_pool(kind: str, size: int = 2) -> nn.Module:
    """A ``size``x``size`` pooling layer: 'max', 'avg' or 'none' (identity)."""
    kind = _choice("pooling", kind, ["max", "avg", "none"])
    return {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}[kind](size) if kind != "none" else nn.Identity()


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias when batch-normed) → BatchNorm2d (optional) → activation."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1,
                 batch_norm: bool = True, activation: str = "relu"):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel_size, stride, kernel_size // 2, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(make_activation(activation))
        super().__init__(*layers)


def _mlp_layers(sizes: Sequence[int], dropout: float, batch_norm: bool, activation: str) -> nn.Sequential:
    """Hidden fully connected layers ``sizes[0] → sizes[1] → ...`` (Linear, BN, act, dropout)."""
    layers: list[nn.Module] = []
    for fin, fout in zip(sizes[:-1], sizes[1:], strict=True):
        layers.append(nn.Linear(fin, fout, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(fout))
        layers.append(make_activation(activation))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class ImageClassifier(nn.Module):
    """Shared interface: ``forward_features`` gives pooled features, ``head`` maps them to logits."""

    head: nn.Module

    def __init__(self, num_features: int, num_classes: int, dropout: float = 0.0, logit_scale: float = 1.0):
        super().__init__()
        self.num_features, self.num_classes = num_features, num_classes
        self.head_dropout, self.logit_scale = dropout, logit_scale
        self.reset_classifier(num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def gradcam_layer(self) -> nn.Module | None:
        """The module whose output Grad-CAM uses (the last conv block); None without convolutions."""
        return None

    def features(self, x: Tensor) -> Tensor:
        """Pooled feature vector ``[B, num_features]``, the classifier's input."""
        return self.forward_features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` classes."""
        self.num_classes = num_classes
        layers: list[nn.Module] = [nn.Dropout(self.head_dropout)] if self.head_dropout > 0 else []
        layers.append(nn.Linear(self.num_features, num_classes, bias=self.logit_scale == 1.0))
        if self.logit_scale != 1.0:
            layers.append(Scale(self.logit_scale))
        self.head = nn.Sequential(*layers) if len(layers) > 1 else layers[0]


class Scale(nn.Module):
    """Multiply by a fixed factor (airbench's 1/9 logit scale)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


# ----------------------------------------------------------------------------------------- MLP


class MLP(ImageClassifier):
    def __init__(self, num_classes: int, in_features: int, hidden: Sequence[int], dropout: float,
                 batch_norm: bool, activation: str):
        super().__init__(hidden[-1] if hidden else in_features, num_classes)
        self.body = _mlp_layers([in_features, *hidden], dropout, batch_norm, activation)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.body(x.flatten(1))


@register_model("mlp", task="image")
def mlp(num_classes: int, in_channels: int = 3, image_size: tuple[int, int] = (32, 32),
        hidden: Sequence[int] = (1024, 512), dropout: float = 0.2, batch_norm: bool = True,
        activation: str = "relu") -> ImageClassifier:
    """Multilayer perceptron on flattened pixels (a baseline; no Grad-CAM layer).

    ``hidden``: widths of the hidden layers; ``dropout`` after each hidden layer.
    """
    return MLP(num_classes, in_channels * image_size[0] * image_size[1], hidden, dropout, batch_norm, activation)


# ----------------------------------------------------------------------------------------- CNN


class ConvNet(ImageClassifier):
    """Convolutional body (``nn.Sequential`` ending in its last conv block), pooling, optional fc."""

    def __init__(self, body: nn.Sequential, last_conv: nn.Module, out_channels: int, out_hw: tuple[int, int],
                 num_classes: int, global_pool: bool, hidden: Sequence[int], dropout: float,
                 batch_norm: bool, activation: str):
        flat = out_channels if global_pool else out_channels * out_hw[0] * out_hw[1]
        super().__init__(hidden[-1] if hidden else flat, num_classes, dropout)
        self.body, self._last_conv = body, [i for i, m in enumerate(body) if m is last_conv][0]
        self.pool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
        self.fc = _mlp_layers([flat, *hidden], dropout, batch_norm, activation)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.body[self._last_conv]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.body(x)).flatten(1))


def _conv_stack(in_channels: int, layout: Sequence[int | str], kernel_size: int, batch_norm: bool,
                activation: str, pool: str, dropout: float = 0.0) -> tuple[nn.Sequential, nn.Module, int, int]:
    """Conv blocks from a layout of widths and 'M' (pool); returns body, last conv block, channels, pools."""
    layers: list[nn.Module] = []
    cin, pools, last = in_channels, 0, None
    for item in layout:
        if item == "M":
            layers.append(make_pool(pool))
            pools += pool != "none"
            if dropout > 0:
                layers.append(nn.Dropout2d(dropout))
        else:
            last = ConvBNAct(cin, int(item), kernel_size, 1, batch_norm, activation)
            layers.append(last)
            cin = int(item)
    if last is None:
        raise VislangError("The conv layout has no conv layers; give at least one width.")
    return nn.Sequential(*layers), last, cin, pools


@register_model("cnn", task="image")
def cnn(num_classes: int, in_channels: int = 3, image_size: tuple[int, int] = (32, 32),
        channels: Sequence[Sequence[int]] = ((64, 64), (128, 128), (256, 256)), kernel_size: int = 3,
        pool: str = "max", batch_norm: bool = True, activation: str = "relu", conv_dropout: float = 0.0,
        global_pool: bool = True, hidden: Sequence[int] = (), dropout: float = 0.2) -> ImageClassifier:
    """Plain CNN: stages of conv blocks, each stage followed by pooling, then fc layers.

    ``channels``: one list of conv widths per stage; ``pool``: 'max' | 'avg' | 'none' after each stage;
    ``conv_dropout``: spatial dropout after each pool; ``global_pool``: average-pool to 1x1 (else flatten);
    ``hidden``: fc widths before the classifier; ``dropout``: before each fc layer's output and the classifier.
    """
    layout: list[int | str] = []
    for stage in channels:
        layout += [*stage, "M"]
    body, last, cout, pools = _conv_stack(in_channels, layout, kernel_size, batch_norm, activation, pool,
                                          conv_dropout)
    hw = (image_size[0] >> pools, image_size[1] >> pools)
    if min(hw) < 1:
        raise VislangError(f"{len(channels)} pooled stages shrink a {image_size} image to nothing; "
                           "use fewer stages, pool='none' or larger images.")
    return ConvNet(body, last, cout, hw, num_classes, global_pool, hidden, dropout, batch_norm, activation)


# ----------------------------------------------------------------------------------------- VGG


@register_model("vgg", task="image")
def vgg(num_classes: int, in_channels: int = 3, image_size: tuple[int, int] = (32, 32),
        layout: str | Sequence[int | str] = "vgg16", batch_norm: bool = True, hidden: Sequence[int] = (512,),
        dropout: float = 0.5, activation: str = "relu") -> ImageClassifier:
    """VGG: 3x3 conv blocks and 2x2 max-pools ('M'), global average pooling, fc classifier.

    ``layout``: 'vgg11' | 'vgg13' | 'vgg16' | 'vgg19' or a list such as ``[64, 'M', 128, 'M']``.
    Global pooling keeps the classifier small at any image size (works at 32x32).
    """
    if isinstance(layout, str):
        layout = VGG_LAYOUTS[_choice("vgg layout", layout, list(VGG_LAYOUTS))]
    pools = sum(item == "M" for item in layout)
    if min(image_size) >> pools < 1:
        raise VislangError(f"The VGG layout pools {pools} times, too often for {image_size} images.")
    body, last, cout, _ = _conv_stack(in_channels, layout, 3, batch_norm, activation, "max")
    return ConvNet(body, last, cout, (1, 1), num_classes, True, hidden, dropout, batch_norm, activation)


# -------------------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        self.branch = nn.Sequential(
            ConvBNAct(cin, width, 3, stride),
            nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width))
        self.shortcut = _shortcut(cin, width, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.branch(x) + self.shortcut(x))


class Bottleneck(BasicBlock):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        nn.Module.__init__(self)
        cout = width * self.expansion
        self.branch = nn.Sequential(
            ConvBNAct(cin, width, 1), ConvBNAct(width, width, 3, stride),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = _shortcut(cin, cout, stride)
        self.act = nn.ReLU(inplace=True)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(ImageClassifier):
    def __init__(self, num_classes: int, in_channels: int, block: type[BasicBlock], layers: Sequence[int],
                 widths: Sequence[int], stem: str, zero_init_residual: bool, dropout: float):
        super().__init__(widths[-1] * block.expansion, num_classes, dropout)
        w0 = widths[0]
        if stem == "cifar":
            self.stem: nn.Module = ConvBNAct(in_channels, w0, 3)
        else:
            self.stem = nn.Sequential(ConvBNAct(in_channels, w0, 7, 2), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], w0
        for i, (n, width) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:  # each residual branch starts as identity: its last BN gamma is 0
            for m in self.stages.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.branch[-1].weight)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.stages[-1]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.pool(self.stages(self.stem(x))).flatten(1)


@register_model("resnet", task="image")
def resnet(num_classes: int, in_channels: int = 3, image_size: tuple[int, int] = (32, 32),
           depth: int | None = None, block: str | None = None, layers: Sequence[int] | None = None,
           widths: Sequence[int] | None = None, stem: str = "cifar", zero_init_residual: bool = True,
           dropout: float = 0.0) -> ImageClassifier:
    """ResNet from scratch (basic or bottleneck blocks), CIFAR or ImageNet stem.

    Give ``depth`` (18, 34, 50, 101, 152: standard block and layers) or ``layers`` (blocks per stage,
    default [2, 2, 2, 2]) with ``block`` ('basic' | 'bottleneck', default 'basic'). ``widths``: per-stage
    widths (default 64, 128, 256, ... doubling); ``stem``: 'cifar' (3x3 stride 1) or 'imagenet'
    (7x7 stride 2 + max-pool); ``zero_init_residual``: zero the last BN gamma of each residual branch;
    ``dropout``: before the classifier.
    """
    if depth is not None:
        if depth not in RESNET_DEPTHS:
            raise VislangError(f"Unsupported resnet depth {depth}; choose one of {sorted(RESNET_DEPTHS)} "
                               "or give 'layers' and 'block' instead.")
        if layers is not None or block is not None:
            raise VislangError("Give either resnet 'depth' or 'layers'/'block', not both.")
        block, layers = RESNET_DEPTHS[depth]
    block = _choice("resnet block", block or "basic", ["basic", "bottleneck"])
    layers = list(layers) if layers is not None else [2, 2, 2, 2]
    widths = list(widths) if widths is not None else [64 * 2**i for i in range(len(layers))]
    if len(layers) != len(widths) or not layers:
        raise VislangError(f"resnet 'layers' ({layers}) and 'widths' ({widths}) must have the same, "
                           "non-zero length: one entry per stage.")
    stem = _choice("resnet stem", stem, ["cifar", "imagenet"])
    block_cls = BasicBlock if block == "basic" else Bottleneck
    return ResNet(num_classes, in_channels, block_cls, layers, widths, stem, zero_init_residual, dropout)


# ------------------------------------------------------------------------------------- fastnet


class FastStage(nn.Module):
    """conv → 2x2 max-pool → BN → act, then more conv-BN-act blocks, optionally as a residual branch."""

    def __init__(self, cin: int, width: int, convs: int, residual: bool, activation: str, bn_momentum: float):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.MaxPool2d(2),
                                  nn.BatchNorm2d(width, momentum=bn_momentum), make_activation(activation))
        self.rest = nn.Sequential(*(ConvBNAct(width, width, 3, activation=activation) for _ in range(convs - 1)))
        for m in self.rest.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = bn_momentum
        self.residual = residual and convs > 1

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(x)
        return x + self.rest(x) if self.residual else self.rest(x)


class FastNet(ImageClassifier):
    def __init__(self, num_classes: int, in_channels: int, stem_width: int, stem_kernel: int,
                 widths: Sequence[int], convs: Sequence[int], residual: Sequence[bool], activation: str,
                 final_pool: str, logit_scale: float, bn_momentum: float, freeze_bn_scale: bool = False,
                 dirac_init: bool = False, stem_bn: bool = True, freeze_stem: bool = False):
        super().__init__(widths[-1], num_classes, logit_scale=logit_scale)
        pad = stem_kernel // 2 if stem_kernel % 2 else 0
        conv = nn.Conv2d(in_channels, stem_width, stem_kernel, padding=pad, bias=not stem_bn)
        if stem_bn:
            self.stem = nn.Sequential(conv, nn.BatchNorm2d(stem_width, momentum=bn_momentum),
                                      make_activation(activation))
        else:
            # airbench: the whitened stem feeds the activation directly (a BN would rescale every
            # whitened channel to unit variance, amplifying the low-variance, noisy directions)
            nn.init.zeros_(conv.bias)
            self.stem = nn.Sequential(conv, make_activation(activation))
        if freeze_stem:
            # airbench: the PCA-whitening filters (init_whitening) stay as computed; the bias still learns
            conv.weight.requires_grad_(False)
        cins = [stem_width, *widths[:-1]]
        self.stages = nn.Sequential(*(FastStage(ci, w, n, r, activation, bn_momentum)
                                      for ci, w, n, r in zip(cins, widths, convs, residual, strict=True)))
        pool = _choice("final_pool", final_pool, ["max", "avg"])
        self.pool = nn.AdaptiveMaxPool2d(1) if pool == "max" else nn.AdaptiveAvgPool2d(1)
        for m in self.stages.modules():
            if dirac_init and isinstance(m, nn.Conv2d):
                # airbench: a conv's first filters (as many as it has in-channels) start as the identity,
                # the rest keep their random init; the fresh net passes its input through
                with torch.no_grad():
                    n = min(m.in_channels, m.out_channels)
                    nn.init.dirac_(m.weight[:n])
            if freeze_bn_scale and isinstance(m, nn.BatchNorm2d):
                # airbench: BN scales stay 1 (only the shifts learn); with scale-invariant convs the
                # learned scale mostly fights weight decay
                m.weight.requires_grad_(False)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.stages[-1]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.pool(self.stages(self.stem(x))).flatten(1)

    @torch.no_grad()
    def init_whitening(self, images: Tensor, eps: float = 5e-4) -> None:
        """Set the stem filters to ± the PCA-whitening patch filters of ``images`` (airbench's trick).

        ``images``: a float sample ``[N, C, H, W]`` normalised like the training data (a few thousand).
        Fills ``min(stem_width // 2, C*k*k)`` filter pairs; the rest keep their random init.
        """
        conv: nn.Conv2d = self.stem[0]
        c, k = conv.in_channels, conv.kernel_size[0]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
        patches = patches - patches.mean(0)
        eigvals, eigvecs = torch.linalg.eigh(patches.T @ patches / len(patches))
        eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1)  # largest first
        n = min(conv.out_channels // 2, c * k * k)
        filters = (eigvecs[:, :n] / (eigvals[:n] + eps).sqrt()).T.reshape(n, c, k, k)
        conv.weight[:n] = filters
        conv.weight[n:2 * n] = -filters


def _per_stage(value: int | bool | Sequence, n: int, name: str) -> list:
    values = list(value) if isinstance(value, Sequence) else [value] * n
    if len(values) != n:
        raise VislangError(f"fastnet '{name}' has {len(values)} entries but there are {n} stages (widths).")
    return values


@register_model("fastnet", task="image")
def fastnet(num_classes: int, in_channels: int = 3, image_size: tuple[int, int] = (32, 32),
            widths: Sequence[int] = (64, 128, 256), stem_width: int = 24, stem_kernel: int = 2,
            convs_per_stage: int | Sequence[int] = 2, residual: bool | Sequence[bool] = False,
            activation: str = "gelu", final_pool: str = "max", logit_scale: float = 1 / 9,
            bn_momentum: float = 0.4, freeze_bn_scale: bool = False, dirac_init: bool = False,
            stem_bn: bool = True, freeze_stem: bool = False) -> ImageClassifier:
    """Fast CIFAR net after airbench94 / ResNet-9: stem, then conv+max-pool+BN+act stages.

    ``widths``: one width per stage (each stage halves the resolution); ``stem_width``/``stem_kernel``:
    the first conv (2x2 with 24 filters can be PCA-whitened via ``model.init_whitening(images)``);
    ``convs_per_stage``: convs per stage (one int or one per stage); ``residual``: make the extra convs
    a residual branch (ResNet-9 style); ``final_pool``: 'max' | 'avg'; ``logit_scale``: multiplies the
    logits (airbench's 1/9); ``bn_momentum``: PyTorch BatchNorm momentum; ``freeze_bn_scale``: keep the
    BatchNorm scales of the stages at 1 (airbench; pair with ``train.bias_lr_mult``); ``dirac_init``: start
    every stage conv as the identity (airbench); ``stem_bn``: batch norm after the stem conv (false: a
    conv with a bias straight into the activation, airbench); ``freeze_stem``: the stem filters do not
    train (keep the PCA whitening; airbench).
    ResNet-9 is ``widths=[128, 256, 512], stem_width=64, stem_kernel=3, convs_per_stage=[3, 1, 3],
    residual=true, activation=relu, logit_scale=0.125``.
    """
    n = len(widths)
    if n == 0:
        raise VislangError("fastnet needs at least one stage width.")
    if min(image_size) >> n < 1:
        raise VislangError(f"fastnet with {n} stages pools {image_size} images to nothing; use fewer widths.")
    convs = [int(c) for c in _per_stage(convs_per_stage, n, "convs_per_stage")]
    res = [bool(r) for r in _per_stage(residual, n, "residual")]
    return FastNet(num_classes, in_channels, stem_width, stem_kernel, widths, convs, res, activation,
                   final_pool, logit_scale, bn_momentum, freeze_bn_scale, dirac_init, stem_bn, freeze_stem)
