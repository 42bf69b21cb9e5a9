"""Batched augmentation and normalisation of uint8 image batches, on whatever device they live on.

Crop-after-padding and translation are both "pad once, then cut a window at a random offset per
image". Every possible window is one row of an overlapping ``as_strided`` view of the padded batch
(no copy), and one ``index_select`` copies each image's chosen window, so there is no per-image
Python loop; the flip rides along in the same call (windows cut from a mirrored copy). Randomness comes from torch's global RNG
on the batch's device, so ``lightning.seed_everything`` makes it repeatable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vislang.config import AugmentConfig


def random_window(x: torch.Tensor, pad: int, mode: str = "constant", flip: bool = False,
                  size: int | None = None) -> torch.Tensor:
    """Pad [B,C,H,W] by ``pad`` (zeros or ``"reflect"``) and cut a window at a random offset per image:
    HxW, or ``size`` x ``size`` (a random crop smaller than the image).

    With ``flip`` each image is also mirrored left-right with probability 0.5, in the same call:
    its window is then cut from a mirrored copy of the padded batch.
    """
    b, c, h0, w0 = x.shape
    if mode == "reflect" and pad >= min(h0, w0):
        raise ValueError(f"translate={pad} must be smaller than the image ({h0}x{w0})")
    h, w = (size, size) if size else (h0, w0)
    if h > h0 or w > w0:
        raise ValueError(f"data.augment.crop_size={size} is larger than the images ({h0}x{w0}): set it to at most "
                         f"{min(h0, w0)}, or 0 to train on whole images")
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode) if pad else x.contiguous()
    if flip:
        padded = torch.cat([padded, padded.flip(3)])  # [2B,...]; the mirror of a pad is the pad of a mirror
    hp, wp = h0 + 2 * pad, w0 + 2 * pad
    # A window of image k at offset (dy, dx) is the strided block (C,H,W) with strides (hp*wp, wp, 1)
    # starting at flat element k*c*hp*wp + dy*wp + dx. View every possible start as a row of that
    # overlapping view (no copy); index_select then copies just the B chosen blocks.
    flat = padded.reshape(-1)
    starts = flat.numel() - ((c - 1) * hp * wp + (h - 1) * wp + w - 1)
    blocks = flat.as_strided((starts, c, h, w), (1, hp * wp, wp, 1))
    dy = torch.randint(0, hp - h + 1, (b,), device=x.device)
    dx = torch.randint(0, wp - w + 1, (b,), device=x.device)
    image = torch.arange(b, device=x.device)
    if flip:
        image = image + b * (torch.rand(b, device=x.device) < 0.5).long()
    return blocks.index_select(0, image * (c * hp * wp) + dy * wp + dx)


def random_affine(x: torch.Tensor, degrees: float, scale: float) -> torch.Tensor:
    """Rotate each image of a float batch by an angle in [-degrees, degrees] and zoom it by a factor in
    [1-scale, 1+scale] about its centre (bilinear, reflect padding), one ``affine_grid`` + ``grid_sample``."""
    b = x.shape[0]
    angle = (torch.rand(b, device=x.device) * 2 - 1) * (degrees * torch.pi / 180)
    zoom = 1 + (torch.rand(b, device=x.device) * 2 - 1) * scale
    # the grid maps output to input coordinates: the inverse transform, i.e. rotate by -angle, scale by 1/zoom
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_photometric(x: torch.Tensor, brightness: float, contrast: float) -> torch.Tensor:
    """Per image of a float batch on the 0..255 scale: contrast factor in [1-contrast, 1+contrast] about the
    image's mean, then a brightness shift of up to ``brightness`` × 255 either way; values stay in 0..255."""
    b = x.shape[0]
    if contrast:
        factor = 1 + (torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1) * contrast
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean).mul_(factor).add_(mean)
    if brightness:
        x = x + (torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1) * (brightness * 255)
    return x.clamp(0, 255)


class BatchTransform(nn.Module):
    """``forward(x_uint8 [B,C,H,W], train) → float32 [B,C,H,W]``, normalised, channels_last (or contiguous
    NCHW with ``channels_last=False``: for a model that flattens its input, such as an MLP, which would
    otherwise copy the batch back).

    ``mean``/``std`` are per channel on the 0..255 scale (use 0 and 255 to only scale to 0..1).
    In train mode it applies, per image: random rotation (``rotate`` degrees) and zoom (``scale``),
    brightness and contrast jitter, random crop after ``crop_padding`` zero padding, random
    translation by up to ``translate`` pixels (reflect padding), horizontal flip, a random
    ``crop_size`` window (training only: evaluation sees whole images), and a ``cutout`` square
    set to 0 after normalisation (i.e. to the dataset mean).
    """

    def __init__(self, aug: AugmentConfig, mean: Sequence[float], std: Sequence[float],
                 channels_last: bool = True) -> None:
        super().__init__()
        self.aug = aug
        self.channels_last = channels_last
        mean_t = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        # normalised = x * scale + shift, with scale = 1/std and shift = -mean/std
        self.register_buffer("scale", 1.0 / std_t, persistent=False)
        self.register_buffer("shift", -mean_t / std_t, persistent=False)
        self.epoch = 0  # the training epoch (set_epoch), for crop_epochs

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def crop_size(self) -> int | None:
        """The training crop of this epoch (``crop_size`` during the first ``crop_epochs``), or None."""
        aug = self.aug
        if aug.crop_epochs is not None and self.epoch >= aug.crop_epochs:
            return None
        return aug.crop_size or None

    def forward(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        if x.dim() == 3:
            return self.forward(x[None], train)[0]
        if train:
            x = self.geometric(x)
        # normalise in NCHW (per-channel constants broadcast over long contiguous rows: fast), then
        # one float copy into channels_last, cheaper than converting the uint8 batch first
        out = x.to(torch.float32).mul_(self.scale.to(x.device)).add_(self.shift.to(x.device))
        if train and self.aug.cutout:
            out = self.cutout(out, self.aug.cutout)
        return out.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def geometric(self, x: torch.Tensor) -> torch.Tensor:
        """Random rotation/zoom, brightness/contrast, crop (zero padding), translation (reflect padding)
        and flip of a [B,C,H,W] batch; the dtype is kept."""
        aug = self.aug
        if aug.rotate or aug.scale or aug.brightness or aug.contrast:
            out = x.float()  # one float round trip for both ops; back to x's dtype so the crops below
            if aug.rotate or aug.scale:  # and the callers' preprocessing see what they always saw
                out = random_affine(out, aug.rotate, aug.scale)
            if aug.brightness or aug.contrast:
                out = random_photometric(out, aug.brightness, aug.contrast)
            x = out.round_().clamp_(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else out.to(x.dtype)
        flip = aug.flip and not aug.alternating_flip
        size = self.crop_size  # the last window cut also takes the smaller crop
        if aug.crop_padding:
            last = not aug.translate
            x = random_window(x, aug.crop_padding, "constant", flip=flip and last, size=size if last else None)
        if aug.translate or (not aug.crop_padding and (flip or size)):
            x = random_window(x, aug.translate, "reflect", flip=flip, size=size)
        return x

    @staticmethod
    def cutout(x: torch.Tensor, size: int) -> torch.Tensor:
        """Zero one ``size``×``size`` square per image, centred uniformly at random (clipped at borders)."""
        b, _, h, w = x.shape
        cy = torch.randint(0, h, (b, 1), device=x.device)
        cx = torch.randint(0, w, (b, 1), device=x.device)
        ys = torch.arange(h, device=x.device)[None] - (cy - size // 2)
        xs = torch.arange(w, device=x.device)[None] - (cx - size // 2)
        inside = ((ys >= 0) & (ys < size))[:, :, None] & ((xs >= 0) & (xs < size))[:, None, :]
        return x.masked_fill_(inside[:, None], 0.0)
