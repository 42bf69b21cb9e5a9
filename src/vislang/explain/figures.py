"""PNG galleries of image explanations (matplotlib; Captum draws the attribution overlays)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from captum.attr import visualization as viz  # noqa: E402

from vislang.io import atomic_save  # noqa: E402

METHOD_TITLES = {"saliency": "saliency", "integrated_gradients": "integrated gradients", "gradcam": "Grad-CAM"}


def _save(fig: plt.Figure, path: Path) -> Path:
    """Lay out below the figure title (tight_layout ignores suptitle), write atomically, close."""
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / height) if fig._suptitle else None)
    atomic_save(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
    return path


def to_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 ``[C, H, W]`` → float ``[H, W, C]`` in 0..1 (what Captum and imshow take)."""
    arr = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return np.transpose(arr, (1, 2, 0)).astype(np.float32) / 255.0


def _show(ax: plt.Axes, image: np.ndarray, title: str = "", fontsize: int = 7) -> None:
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=fontsize)
    ax.axis("off")


def attribution_grid(images: torch.Tensor, maps: dict[str, torch.Tensor], titles: Sequence[str], path: Path) -> Path:
    """One row per image: the input, then each method's map blended over it."""
    n, cols = len(images), 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 1.9 * n), squeeze=False)
    for i in range(n):
        rgb = to_hwc(images[i])
        _show(axes[i, 0], rgb, titles[i])
        for j, (method, attr) in enumerate(maps.items(), start=1):
            heat = attr[i].numpy()[..., None]
            sign = "positive" if method == "gradcam" else "absolute_value"
            viz.visualize_image_attr(heat, rgb if rgb.shape[-1] == 3 else np.repeat(rgb, 3, -1),
                                     method="blended_heat_map", sign=sign, plt_fig_axis=(fig, axes[i, j]),
                                     use_pyplot=False, alpha_overlay=0.55, outlier_perc=1)
            axes[i, j].set_title(METHOD_TITLES.get(method, method) if i == 0 else "", fontsize=8)
            axes[i, j].axis("off")
    return _save(fig, path)


def mosaic(cells: list[list[np.ndarray | None]], size: int, gap: int = 2) -> np.ndarray:
    """Rows of HWC images (each resized to ``size``x``size``, nearest) tiled into one RGB array on white.

    Drawing one image instead of one matplotlib axes per cell keeps a 16x9 gallery fast to render."""
    rows, cols = len(cells), max(len(r) for r in cells)
    out = np.ones((rows * (size + gap) + gap, cols * (size + gap) + gap, 3), dtype=np.float32)
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            if cell is None:
                continue
            t = torch.from_numpy(np.ascontiguousarray(cell)).permute(2, 0, 1)[None].float()
            t = torch.nn.functional.interpolate(t, size=(size, size), mode="nearest")[0].permute(1, 2, 0).numpy()
            if t.shape[-1] == 1:
                t = np.repeat(t, 3, -1)
            y, x = gap + i * (size + gap), gap + j * (size + gap)
            out[y:y + size, x:x + size] = t
    return out


def _colorise(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return plt.get_cmap("viridis")((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a))[..., :3]


def _mosaic_figure(cells: list[list[np.ndarray | None]], row_labels: list[str], captions: list[list[str]],
                   path: Path, title: str, size: int = 40) -> Path:
    grid = mosaic(cells, size)
    h, w = grid.shape[:2]
    scale = 1.9 / 40  # inches per pixel of a cell
    fig, ax = plt.subplots(figsize=(w * scale + 1.2, h * scale + 0.6))
    ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([2 + i * (size + 2) + size / 2 for i in range(len(cells))], row_labels, fontsize=7)
    for side in ax.spines.values():
        side.set_visible(False)
    for i, row in enumerate(captions):
        for j, text in enumerate(row):
            if text:
                ax.text(2 + j * (size + 2) + 1, 2 + i * (size + 2) + 1, text, fontsize=5.5, va="top", ha="left",
                        color="white", bbox={"facecolor": "black", "alpha": 0.55, "pad": 0.6, "linewidth": 0})
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def feature_maps(images: torch.Tensor, acts: torch.Tensor, path: Path, layer: str, per_image: int = 16) -> Path:
    """For each image: the input and the ``per_image`` channels of ``layer`` with the largest mean activation."""
    cells, captions = [], []
    for image, a in zip(images, acts):
        top = a.flatten(1).mean(1).argsort(descending=True)[:per_image].tolist()
        cells.append([to_hwc(image), *[_colorise(a[c].numpy()) for c in top]])
        captions.append(["input", *[f"ch {c}" for c in top]])
    return _mosaic_figure(cells, ["" for _ in cells], captions, path,
                          f"activations of {layer}: the strongest channels per image")


def max_activating_grid(rows: list[tuple[str, list[np.ndarray], list[str]]], path: Path, title: str) -> Path:
    """One row per channel: its label, then the top-k patches with their activation values."""
    return _mosaic_figure([r[1] for r in rows], [r[0] for r in rows], [r[2] for r in rows], path, title)


def image_gallery(images: Sequence[torch.Tensor], titles: Sequence[str], path: Path, title: str,
                  cols: int = 8) -> Path:
    """A grid of images with a caption each."""
    n = max(1, len(images))
    cols = min(cols, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, titles):
        _show(ax, to_hwc(image), caption, fontsize=6)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def pairs_gallery(pairs: list[tuple[str, list[torch.Tensor], list[str]]], path: Path, title: str) -> Path:
    """One row per confused class pair: label, then example images."""
    n = len(pairs)
    k = max(1, max(len(p[1]) for p in pairs))
    fig, axes = plt.subplots(n, k, figsize=(1.5 * k + 1.5, 1.7 * n + 0.4), squeeze=False)
    for i, (label, images, captions) in enumerate(pairs):
        for j in range(k):
            axes[i, j].axis("off")
            if j < len(images):
                _show(axes[i, j], to_hwc(images[j]), captions[j], fontsize=6)
        axes[i, 0].text(-0.1, 0.5, label, transform=axes[i, 0].transAxes, ha="right", va="center", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)
