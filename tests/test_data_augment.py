"""Batched augmentation: shapes, determinism under a seed, and that each op does what it says."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vislang.config import AugmentConfig
from vislang.data.augment import BatchTransform

MEAN, STD = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]  # identity normalisation: outputs are pixel values


def _batch(n: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 12, 10), dtype=torch.uint8, generator=g)


def _windows(padded: torch.Tensor, h: int, w: int) -> list[torch.Tensor]:
    return [
        padded[:, i : i + h, j : j + w]
        for i in range(padded.shape[1] - h + 1)
        for j in range(padded.shape[2] - w + 1)
    ]


def test_shapes_dtype_layout_and_eval_is_plain_normalisation() -> None:
    x = _batch()
    t = BatchTransform(
        AugmentConfig(crop_padding=2, translate=1, flip=True, cutout=3), [10.0, 20.0, 30.0], [2.0, 4.0, 8.0]
    )
    out = t(x, train=True)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    ev = t(x, train=False)
    expected = (x.float() - torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)) / torch.tensor(
        [2.0, 4.0, 8.0]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(ev, expected)
    assert t(x[0], train=False).shape == (3, 12, 10)


def test_same_seed_same_augmentation() -> None:
    x = _batch()
    t = BatchTransform(AugmentConfig(crop_padding=2, flip=True, cutout=4, rotate=10, scale=0.1, brightness=0.1,
                                     contrast=0.2), MEAN, STD)
    torch.manual_seed(7)
    a = t(x, train=True)
    torch.manual_seed(7)
    b = t(x, train=True)
    c = t(x, train=True)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flip_mirrors_about_half_the_images() -> None:
    x = _batch(200)
    out = BatchTransform(AugmentConfig(flip=True), MEAN, STD)(x, train=True)
    same = (out == x.float()).flatten(1).all(1)
    mirrored = (out == x.flip(3).float()).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 60 < int(mirrored.sum()) < 140


def test_crop_reads_a_window_of_the_zero_padded_image() -> None:
    x = _batch(32)
    out = BatchTransform(AugmentConfig(crop_padding=2), MEAN, STD)(x, train=True)
    padded = F.pad(x, (2, 2, 2, 2)).float()
    offsets = set()
    for img, src in zip(out, padded, strict=True):
        matches = [k for k, win in enumerate(_windows(src, 12, 10)) if torch.equal(win, img)]
        assert matches
        offsets.add(matches[0])
    assert len(offsets) > 5  # offsets vary per image


def test_translate_uses_reflect_padding() -> None:
    x = _batch(32)
    out = BatchTransform(AugmentConfig(translate=2), MEAN, STD)(x, train=True)
    padded = F.pad(x.float(), (2, 2, 2, 2), mode="reflect")
    for img, src in zip(out, padded, strict=True):
        assert any(torch.equal(win, img) for win in _windows(src, 12, 10))


def test_crop_size_trains_on_smaller_windows_and_evaluates_whole_images() -> None:
    x = _batch(48)
    t = BatchTransform(AugmentConfig(translate=1, crop_size=8, flip=True), MEAN, STD)
    out = t(x, train=True)
    assert out.shape == (48, 3, 8, 8)
    padded = F.pad(x.float(), (1, 1, 1, 1), mode="reflect")
    offsets = set()
    for img, src in zip(out, padded, strict=True):
        matches = [k for k, win in enumerate(_windows(src, 8, 8) + _windows(src.flip(2), 8, 8))
                   if torch.equal(win, img)]
        assert matches  # a window of the padded image or of its mirror
        offsets.add(matches[0])
    assert len(offsets) > 10  # offsets anywhere in the padded image, not only within the translate range
    assert t(x, train=False).shape == x.shape  # evaluation sees whole images
    alone = BatchTransform(AugmentConfig(crop_size=6), MEAN, STD)(x, train=True)  # no padding, no flip
    assert alone.shape == (48, 3, 6, 6)
    assert all(any(torch.equal(win, img) for win in _windows(src, 6, 6)) for img, src in zip(alone, x.float()))
    staged = BatchTransform(AugmentConfig(crop_size=6, crop_epochs=2), MEAN, STD)
    sizes = []
    for epoch in range(4):
        staged.set_epoch(epoch)
        sizes.append(tuple(staged(x, train=True).shape[-2:]))
    assert sizes == [(6, 6), (6, 6), (12, 10), (12, 10)]  # crop_epochs: crops first, then whole images
    try:
        BatchTransform(AugmentConfig(crop_size=11), MEAN, STD)(x, train=True)  # images are 12x10
    except ValueError as e:
        assert "crop_size=11" in str(e) and "12x10" in str(e)
    else:
        raise AssertionError("a crop larger than the image was not refused")


def test_cutout_zeroes_one_square() -> None:
    x = torch.full((16, 3, 12, 12), 200, dtype=torch.uint8)
    out = BatchTransform(AugmentConfig(cutout=4), MEAN, STD)(x, train=True)
    zeros = (out == 0).all(1)  # [B,H,W]
    for mask in zeros:
        rows, cols = mask.nonzero(as_tuple=True)
        assert 0 < len(rows) <= 16
        assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a rectangle


def test_rotation_and_zoom_turn_images_about_their_centre() -> None:
    # a bright bar through the centre of a dark 32x32 image: rotating and zooming about the centre
    # keeps its centre of mass at the centre, changes the image, and keeps dtype and range
    x = torch.zeros(64, 1, 32, 32, dtype=torch.uint8)
    x[:, :, 14:18, 4:28] = 200
    torch.manual_seed(0)
    out = BatchTransform(AugmentConfig(rotate=30, scale=0.2), [0.0], [1.0]).geometric(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    changed = (out != x).flatten(1).any(1)
    assert int(changed.sum()) > 55
    ys = torch.arange(32.0).view(1, 1, 32, 1)
    xs = torch.arange(32.0).view(1, 1, 1, 32)
    mass = out.float().sum(dim=(1, 2, 3))
    cy = (out.float() * ys).sum(dim=(1, 2, 3)) / mass
    cx = (out.float() * xs).sum(dim=(1, 2, 3)) / mass
    assert torch.allclose(cy, torch.full_like(cy, 15.5), atol=0.6)
    assert torch.allclose(cx, torch.full_like(cx, 15.5), atol=0.6)
    # a uniform image stays uniform (reflect padding brings in no black corners)
    flat = torch.full((8, 3, 16, 16), 90, dtype=torch.uint8)
    assert torch.equal(BatchTransform(AugmentConfig(rotate=45, scale=0.3), MEAN, STD).geometric(flat), flat)


def test_brightness_and_contrast_jitter_each_image_within_range() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(60, 190, (128, 1, 16, 16), dtype=torch.uint8, generator=g)
    torch.manual_seed(0)
    out = BatchTransform(AugmentConfig(brightness=0.1), [0.0], [1.0]).geometric(x).float()
    shift = (out - x.float()).flatten(1)
    # one shift per image (no clipping for these pixel values), different between images, at most 25.5
    assert torch.equal(shift.amin(1), shift.amax(1))
    assert shift[:, 0].abs().max() <= 26 and shift[:, 0].std() > 5
    out = BatchTransform(AugmentConfig(contrast=0.5), [0.0], [1.0]).geometric(x).float()
    # contrast scales each image's spread about its own mean, which stays put
    assert torch.allclose(out.mean(dim=(1, 2, 3)), x.float().mean(dim=(1, 2, 3)), atol=1.0)
    ratio = out.flatten(1).std(1) / x.float().flatten(1).std(1)
    assert 0.45 < float(ratio.min()) < 0.7 and 1.3 < float(ratio.max()) < 1.55
