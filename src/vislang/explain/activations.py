"""Layer activations and maximally activating dataset images.

:func:`max_activating` finds, for every channel (conv layers) or unit (linear layers) of one or more
layers, the ``k`` images of a split that activate it most, in ONE pass over the data: each batch's
per-channel maxima are merged into a running top-k of shape ``[C, k]``, so memory grows with ``k``,
never with the dataset. The forward pass stops at the deepest requested layer.

:func:`receptive_field` gives the input region a position of a layer's output depends on, so the
maximally activating image can be shown as the patch that activated the channel. Neither Captum nor
torchvision computes receptive fields of arbitrary modules, hence the small gradient-based routine
here: it works for any architecture (branches, residuals), not only plain conv/pool chains.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from vislang.errors import VislangError, did_you_mean


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every sub-module, as accepted by ``--layer``."""
    return [name for name, _ in model.named_modules() if name]


def describe_layers(model: nn.Module) -> str:
    return ", ".join(f"{name} ({type(m).__name__})" for name, m in model.named_modules() if name)


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module called ``name`` ('gradcam' = the model's declared Grad-CAM layer), or an error
    listing every layer."""
    if name == "gradcam" and getattr(model, "gradcam_layer", None) is not None:
        return model.gradcam_layer
    modules = dict(model.named_modules())
    if not name or name not in modules:
        raise VislangError(f"Layer '{name}' does not exist in {type(model).__name__}.{did_you_mean(name, modules)} "
                           f"Layers: {describe_layers(model)}.")
    return modules[name]


def layer_name_of(model: nn.Module, layer: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is layer)


class _Stop(Exception):
    """Raised by a hook to end the forward pass once the deepest requested layer has run."""


@contextlib.contextmanager
def capture(layers: dict[str, nn.Module], stop_after: str | None = None,
            reduce: Callable[[torch.Tensor], object] | None = None) -> Iterator[dict[str, object]]:
    """Forward hooks storing each layer's output (a copy, or ``reduce(output)``) in the yielded dict,
    optionally ending the pass after ``stop_after``. The output is read inside the hook, before a
    following in-place op (``ReLU(inplace=True)``) can change it."""
    store: dict[str, object] = {}

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            store[name] = reduce(output.detach()) if reduce else output.detach().clone()
            if name == stop_after and all(n in store for n in layers):
                raise _Stop

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in layers.items()]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def activations(model: nn.Module, x: torch.Tensor, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Outputs of ``layers`` for a prepared batch (float32)."""
    with capture(layers) as store:
        model(x)
    return {n: store[n].float() for n in layers}


@dataclass
class TopK:
    """Running top-k per channel: ``values``/``index`` (dataset index)/``pos`` (flat spatial position), all ``[C, k]``."""

    values: torch.Tensor
    index: torch.Tensor
    pos: torch.Tensor
    spatial: tuple[int, ...]

    def update(self, batch_max: tuple[torch.Tensor, torch.Tensor], first_index: int, k: int) -> None:
        """Merge one batch's per-channel maxima (values and positions ``[B, C]``, see :func:`channel_max`)."""
        vals, pos = batch_max
        b, c = vals.shape
        idx = torch.arange(first_index, first_index + b).expand(c, b)
        values = torch.cat([self.values, vals.T], 1)
        index = torch.cat([self.index, idx], 1)
        positions = torch.cat([self.pos, pos.T], 1)
        top = values.topk(min(k, values.shape[1]), dim=1)
        self.values, self.index, self.pos = top.values, index.gather(1, top.indices), positions.gather(1, top.indices)

    @staticmethod
    def empty(channels: int, spatial: tuple[int, ...]) -> TopK:
        return TopK(torch.empty(channels, 0), torch.empty(channels, 0, dtype=torch.long),
                    torch.empty(channels, 0, dtype=torch.long), spatial)


def channel_max(act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Per-image, per-channel maximum over spatial positions and its flat position (``[B, C]`` each)."""
    flat = act.reshape(act.shape[0], act.shape[1], -1)  # linear layers: one position
    vals, pos = flat.max(2)
    return vals.float(), pos, tuple(act.shape[2:])


def _forward_order(model: nn.Module, x: torch.Tensor, layers: dict[str, nn.Module]) -> list[str]:
    with capture(layers, reduce=lambda out: None) as store:
        model(x[:1])
    return list(store)  # dicts keep insertion order = the order the hooks fired


@torch.inference_mode()
def max_activating(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], prepare,
                   layers: dict[str, nn.Module], k: int = 9, total: int | None = None,
                   autocast: bool = False, progress: bool = True) -> dict[str, TopK]:
    """Top-``k`` images per channel of each layer over ``batches`` of raw uint8 images, in one pass.

    ``prepare(uint8 batch) -> float batch`` is the run's eval transform. Each image scores a channel
    by its maximum over spatial positions. Memory: ``O(channels * (k + batch))`` per layer.
    """
    model.eval()
    tops: dict[str, TopK] = {}
    stop_after: str | None = None
    seen = 0
    bar = tqdm(total=total, desc="max-activating", unit="img", disable=not progress, dynamic_ncols=True)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        for images, _ in batches:
            x = prepare(images)
            if stop_after is None:
                stop_after = _forward_order(model, x, layers)[-1]
            with capture(layers, stop_after, reduce=channel_max) as store:
                with contextlib.suppress(_Stop):
                    model(x)
            for name in layers:
                vals, pos, spatial = store[name]
                if name not in tops:
                    tops[name] = TopK.empty(vals.shape[1], spatial)
                tops[name].update((vals, pos), seen, k)
            seen += len(images)
            bar.update(len(images))
    bar.close()
    return tops


@dataclass
class ReceptiveField:
    """Box ``(top, left, height, width)`` in input pixels of the output position at the map's centre,
    and how far it moves per output step (``jump``); :meth:`box` gives it for any position."""

    top: int
    left: int
    height: int
    width: int
    jump: tuple[float, float]
    centre: tuple[int, int]
    image: tuple[int, int]

    def box(self, i: int, j: int) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of output position (i, j), clipped to the image."""
        y0 = self.top + round((i - self.centre[0]) * self.jump[0])
        x0 = self.left + round((j - self.centre[1]) * self.jump[1])
        h, w = self.image
        return max(0, y0), min(h, y0 + self.height), max(0, x0), min(w, x0 + self.width)


def receptive_field(model: nn.Module, layer: nn.Module, input_shape: tuple[int, int, int],
                    samples: int = 16, seed: int = 0) -> ReceptiveField:
    """The receptive field of ``layer``'s output positions, measured by gradients.

    The gradient of the centre position (all channels) with respect to a batch of random inputs is
    non-zero exactly on the input pixels it depends on; ReLUs and max-pools route gradients through
    a subset that changes with the input, so the union over ``samples`` random inputs gives the full
    (theoretical) field. The step between neighbouring positions is the input size over the map size.
    """
    c, h, w = input_shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, c, h, w, generator=gen, requires_grad=True)
    store_out: dict[str, torch.Tensor] = {}

    def keep(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        store_out["out"] = out

    handle = layer.register_forward_hook(keep)
    with torch.enable_grad():
        try:
            model.eval()
            model(x)
        finally:
            handle.remove()
        out = store_out["out"]
        if out.dim() != 4:  # a linear layer sees the whole image
            return ReceptiveField(0, 0, h, w, (float(h), float(w)), (0, 0), (h, w))
        fh, fw = out.shape[-2:]
        ci, cj = fh // 2, fw // 2
        (grad,) = torch.autograd.grad(out[:, :, ci, cj].float().sum(), x)
    mask = grad.abs().sum((0, 1)) > 0
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    if len(rows) == 0:
        return ReceptiveField(0, 0, h, w, (h / fh, w / fw), (ci, cj), (h, w))
    top, left = int(rows.min()), int(cols.min())
    return ReceptiveField(top, left, int(rows.max()) - top + 1, int(cols.max()) - left + 1,
                          (h / fh, w / fw), (ci, cj), (h, w))
