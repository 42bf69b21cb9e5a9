"""Decode a split once into a uint8 array on disk ([N,C,H,W], memory-mapped) and reuse it.

The store folder is ``cache_dir()/store/<name>-<hash>/`` where the hash covers the dataset
fingerprint, the item list, the labels, the target size and channels and ``skip_corrupt``;
so a later run with the same data and settings reuses it, and a changed source file (which
changes the fingerprint) gives a fresh one. It is built in a temporary folder and renamed
into place, so a crash never leaves a half-written store that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from vislang.data.fetch import MARKER, cache_dir
from vislang.data.images import ImageSplit
from vislang.errors import VislangError
from vislang.io import atomic_write_json, build_folder

log = logging.getLogger("vislang.data")

STORE_VERSION = 1  # bump when the decoding changes, so old stores are not reused
PARALLEL_MIN = 2048  # fewer images than this are decoded in-process (a pool costs ~1 s to start)
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}

Size = tuple[int, int]


def _as_hw(size: int | tuple[int, int] | None) -> Size | None:
    if size is None:
        return None
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def convert_image(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL image to 'L' (channels=1) or 'RGB' (channels=3).

    16-bit and 32-bit integer images are scaled to 8 bits (65535 → 255); transparent images
    (RGBA, LA, palette with transparency) are composited on black; EXIF rotation is applied.
    """
    img = ImageOps.exif_transpose(img) or img
    if img.mode in _SIXTEEN_BIT:
        arr = np.asarray(img).astype(np.float64) / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8), "L")
    elif img.mode in ("P", "PA"):
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return img.convert("L" if channels == 1 else "RGB")


def load_image(path: str | Path, size: int | tuple[int, int] | None, channels: int) -> np.ndarray:
    """Decode one image file to uint8 [C,H,W], converted to ``channels`` and resized to ``size`` (h, w)."""
    hw = _as_hw(size)
    with Image.open(path) as img:
        if hw is not None and img.format == "JPEG":
            img.draft(img.mode, (hw[1], hw[0]))  # let libjpeg decode big photos at a reduced scale
        img.load()
        img = convert_image(img, channels)
        if hw is not None and img.size != (hw[1], hw[0]):
            img = img.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
        arr = np.asarray(img)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _decode_chunk(
    paths: list[str], start: int, file: str, hw: Size, channels: int, resize: bool
) -> list[tuple[int, str, str]]:
    """Decode ``paths`` into rows ``start..`` of the store file; return (index, kind, message) problems."""
    out = np.load(file, mmap_mode="r+")
    problems = []
    for k, path in enumerate(paths):
        try:
            arr = load_image(path, hw if resize else None, channels)
        except Exception as err:  # noqa: BLE001 - any decoder failure means an unreadable file
            problems.append((start + k, "corrupt", f"{type(err).__name__}: {err}"))
            continue
        if arr.shape[1:] != hw:
            problems.append((start + k, "size", f"{arr.shape[2]}x{arr.shape[1]}"))
            continue
        out[start + k] = arr
    out.flush()
    return problems


class RateColumn(ProgressColumn):
    """Items per second."""

    def render(self, task) -> Text:  # noqa: ANN001 - rich's Task
        return Text(f"{task.speed:,.0f} img/s" if task.speed else "… img/s", style="progress.data.speed")


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeRemainingColumn(),
        disable=not enabled, transient=True,
    )  # fmt: skip


def store_key(
    split: ImageSplit, *, fingerprint: str, size: Size | None, channels: int, skip_corrupt: bool
) -> str:
    """Hash of everything that determines the decoded array."""
    h = hashlib.sha256(f"v{STORE_VERSION}|{fingerprint}|{size}|{channels}|{skip_corrupt}|".encode())
    if split.is_array:
        arr = np.ascontiguousarray(split.items)
        h.update(f"{arr.shape}{arr.dtype}".encode())
        h.update(memoryview(arr).cast("B"))
    else:
        for p in split.items:
            h.update(os.fsencode(p) + b"\0")
    h.update(split.labels.tobytes())
    return h.hexdigest()[:20]


def decode_split(
    split: ImageSplit,
    *,
    size: int | tuple[int, int] | None = None,
    channels: int = 3,
    skip_corrupt: bool = False,
    name: str = "data",
    fingerprint: str = "",
    progress: bool = True,
    workers: int | None = None,
) -> tuple[np.memmap, np.ndarray]:
    """Decoded uint8 images [N,C,H,W] (memory-mapped from the store) and their int64 labels.

    Builds the store on first use (decoding files in parallel) and reuses it afterwards.
    ``size`` is (h, w) or an int; without it all images must share one size.
    """
    hw = _as_hw(size)
    key = store_key(split, fingerprint=fingerprint, size=hw, channels=channels, skip_corrupt=skip_corrupt)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    target = cache_dir() / "store" / f"{safe}-{key}"
    build_folder(target, lambda folder: _build(split, folder, hw=hw, channels=channels, skip_corrupt=skip_corrupt,
                                               name=name, progress=progress, workers=workers), marker=MARKER)
    meta = json.loads((target / "meta.json").read_text())
    if meta["skipped"]:
        log.warning(
            "%s: skipped %d unreadable image(s), e.g. %s", name, len(meta["skipped"]), meta["skipped"][0]
        )
    images = np.load(target / "images.npy", mmap_mode="r")
    return images, np.load(target / "labels.npy")


def skipped_files(images: np.ndarray) -> list[str]:
    """Files left out of a store built with ``skip_corrupt`` (from its meta.json)."""
    meta = Path(images.filename).parent / "meta.json"  # type: ignore[attr-defined]
    return json.loads(meta.read_text())["skipped"]


def _build(split: ImageSplit, folder: Path, *, hw: Size | None, channels: int, skip_corrupt: bool, name: str, progress: bool, workers: int | None) -> None:  # fmt: skip
    file = folder / "images.npy"
    labels = split.labels
    skipped: list[str] = []
    if split.is_array:
        _write_array(split.items, file, hw, channels)  # type: ignore[arg-type]
    else:
        paths = [str(p) for p in split.items]
        shape_hw = hw or _first_size(paths, skip_corrupt, name)
        out = np.lib.format.open_memmap(
            file, mode="w+", dtype=np.uint8, shape=(len(paths), channels, *shape_hw)
        )
        del out  # workers open the file themselves
        problems = _decode_all(paths, str(file), shape_hw, channels, hw is not None, name, progress, workers)
        sizes = [p for p in problems if p[1] == "size"]
        if sizes:
            i, _, got = sizes[0]
            raise VislangError(
                f"Images of {name} differ in size: {paths[i]} is {got} but {paths[0]} is {shape_hw[1]}x{shape_hw[0]} "
                f"({len(sizes)} image(s) differ). Set data.image_size to resize them all when decoding."
            )
        if problems and not skip_corrupt:
            i, _, msg = problems[0]
            raise VislangError(
                f"Cannot read image {paths[i]} ({msg}); {len(problems)} unreadable image(s) in {name}. "
                f"Replace or delete the file, or set data.skip_corrupt: true to skip unreadable images."
            )
        if problems:
            bad = sorted(i for i, _, _ in problems)
            skipped = [paths[i] for i in bad]
            keep = np.setdiff1d(np.arange(len(paths)), bad)
            if len(keep) == 0:
                raise VislangError(f"Every image of {name} is unreadable (e.g. {skipped[0]}).")
            _compact(file, keep)
            labels = labels[keep]
    np.save(folder / "labels.npy", labels.astype(np.int64))
    atomic_write_json(folder / "meta.json", {"name": name, "count": int(len(labels)), "skipped": skipped})


def _first_size(paths: list[str], skip_corrupt: bool, name: str) -> Size:
    """Height and width of the first readable image (the size every image must share)."""
    for p in paths:
        try:
            return load_image(p, None, 1).shape[1:]  # type: ignore[return-value]
        except Exception as err:  # noqa: BLE001 - any decoder failure means an unreadable file
            if not skip_corrupt:
                raise VislangError(
                    f"Cannot read image {p} ({type(err).__name__}: {err}). Replace or delete the file, "
                    f"or set data.skip_corrupt: true to skip unreadable images."
                ) from None
    raise VislangError(f"Every image of {name} is unreadable (e.g. {paths[0]}).")


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork on Linux (fast, no re-import of the caller's script; workers touch only numpy/PIL, as
    torch's own DataLoader workers do), spawn elsewhere."""
    if sys.platform == "linux":
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _decode_all(paths: list[str], file: str, hw: Size, channels: int, resize: bool, name: str, progress: bool, workers: int | None) -> list[tuple[int, str, str]]:  # fmt: skip
    workers = workers or min(os.cpu_count() or 1, 8)
    chunk = max(64, min(1024, len(paths) // (workers * 8) or 1))
    starts = range(0, len(paths), chunk)
    problems: list[tuple[int, str, str]] = []
    with _progress(progress) as bar:
        task = bar.add_task(f"decode {name}", total=len(paths))
        done: set[int] = set()
        if workers > 1 and len(paths) >= PARALLEL_MIN:
            try:
                with ProcessPoolExecutor(workers, mp_context=_pool_context()) as pool:
                    jobs = [(s, paths[s : s + chunk]) for s in starts]
                    futures = {
                        pool.submit(_decode_chunk, part, s, file, hw, channels, resize): (s, len(part))
                        for s, part in jobs
                    }
                    for future in as_completed(futures):
                        problems += future.result()
                        done.add(futures[future][0])
                        bar.advance(task, futures[future][1])
            except BrokenProcessPool:
                log.warning("decoding %s: a worker process died; decoding the rest in this process", name)
        for s in starts:  # serial path, and whatever a broken pool left undone
            if s not in done:
                problems += _decode_chunk(paths[s : s + chunk], s, file, hw, channels, resize)
                bar.advance(task, len(paths[s : s + chunk]))
    return problems


def _write_array(images: np.ndarray, file: Path, hw: Size | None, channels: int) -> None:
    """Arrays [N,H,W] / [N,H,W,C] go straight in: channel axis first, channels converted, resized if asked."""
    n = len(images)
    src_hw = images.shape[1:3]
    out = np.lib.format.open_memmap(file, mode="w+", dtype=np.uint8, shape=(n, channels, *(hw or src_hw)))
    for s in range(0, n, 4096):
        block = images[s : s + 4096]
        if block.ndim == 3:
            block = block[..., None]
        if block.shape[-1] in (2, 4):  # alpha: composite on black
            alpha = block[..., -1:].astype(np.float32) / 255.0
            block = np.rint(block[..., :-1] * alpha).astype(np.uint8)
        if channels == 3 and block.shape[-1] == 1:
            block = np.repeat(block, 3, axis=-1)
        elif channels == 1 and block.shape[-1] == 3:  # ITU-R 601-2 luma, as PIL's convert("L")
            block = np.rint(block @ np.array([0.299, 0.587, 0.114])).clip(0, 255).astype(np.uint8)[..., None]
        if hw is not None and tuple(src_hw) != hw:
            block = np.stack([_resize_array(im, hw) for im in block])
        out[s : s + len(block)] = block.transpose(0, 3, 1, 2)
    out.flush()


def _resize_array(image: np.ndarray, hw: Size) -> np.ndarray:
    """Resize one [H,W,C] uint8 image (C = 1 or 3) with PIL's bilinear filter."""
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    return np.asarray(pil.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)).reshape(*hw, image.shape[-1])


def _compact(file: Path, keep: np.ndarray) -> None:
    """Rewrite the store file with only the rows in ``keep``."""
    src = np.load(file, mmap_mode="r")
    tmp = file.with_name("images.compact.npy")
    dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(keep), *src.shape[1:]))
    for s in range(0, len(keep), 4096):
        dst[s : s + 4096] = src[keep[s : s + 4096]]
    dst.flush()
    del src, dst
    os.replace(tmp, file)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0..255 scale) of uint8 images [N,C,H,W]; cached beside a store file."""
    cache = Path(images.filename).parent / "stats.json" if getattr(images, "filename", None) else None
    if cache is not None and cache.is_file():
        stats = json.loads(cache.read_text())
        return stats["mean"], stats["std"]
    c = images.shape[1]
    total, total_sq = np.zeros(c), np.zeros(c)
    for s in range(0, len(images), 2048):
        block = np.asarray(images[s : s + 2048], dtype=np.float64)
        total += block.sum(axis=(0, 2, 3))
        total_sq += np.square(block).sum(axis=(0, 2, 3))
    count = max(1, len(images) * images.shape[2] * images.shape[3])
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    result = ([float(m) for m in mean], [float(max(x, 1e-6)) for x in std])
    if cache is not None:
        atomic_write_json(cache, {"mean": result[0], "std": result[1]})
    return result
