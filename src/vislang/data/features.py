"""The frozen-feature cache: run a frozen network over each image once, keep what it gives on disk.

A frozen backbone gives the same output for the same image in every epoch, every run, every fold
of a k-fold and every trial of a sweep, so :func:`cached_features` computes it once per image and
reads it back afterwards. Entries are keyed by a dict describing the computation (backbone, weights
identity, preprocessing, pooling, augmentation view ...) and, inside that, by a hash of each
image's bytes, so a later request for any subset or permutation of already-seen images (a fold,
a val carve, a sweep trial) is served without recomputing; only unseen images are computed.

Layout under the vislang cache (``$VISLANG_CACHE``, default ``~/.cache/vislang``)::

    features/<desc>-<hash of key>/key.json            the key, for people
    features/<desc>-<hash of key>/chunks/<id>/        one batch of newly computed images:
        hashes.npy   [n] 16-byte image hashes,  <output>.npy  [n, ...] per output,  .complete

A chunk is written into a temporary folder and renamed into place when whole, so a crash never
leaves a partial chunk that looks complete; concurrent writers at worst compute an image twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vislang.data.fetch import MARKER, cache_dir

log = logging.getLogger("vislang.data")

FEATURES_VERSION = 1  # bump when the cache layout changes
# computed / reused image counts since the process started (tests assert that a second run computes nothing)
STATS: dict[str, int] = {"computed": 0, "reused": 0}
CHUNK = 2048  # images per stored chunk


def key_hash(key: dict[str, Any]) -> str:
    """Stable hash of a JSON-able key dict (sorted keys)."""
    text = json.dumps({"v": FEATURES_VERSION, **key}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cache_folder(key: dict[str, Any], name: str = "features") -> Path:
    """Folder of the cache entry for ``key`` (``name`` is a readable prefix; the key's hash identifies it)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]
    return cache_dir() / "features" / f"{safe}-{key_hash(key)}"


def image_hashes(images: Any) -> np.ndarray:
    """One 16-byte BLAKE2b hash per image (of its shape, dtype and bytes): ``[N]`` array of ``S16``."""
    out = np.empty(len(images), dtype="S16")
    for start in range(0, len(images), 1024):
        block = images[start:start + 1024]
        block = block.numpy() if isinstance(block, Tensor) else np.asarray(block)
        block = np.ascontiguousarray(block)
        meta = f"{block.shape[1:]}{block.dtype}".encode()
        for k in range(len(block)):
            h = hashlib.blake2b(meta, digest_size=16)
            h.update(memoryview(block[k]).cast("B"))
            out[start + k] = h.digest()
    return out


def _chunks(folder: Path) -> list[Path]:
    root = folder / "chunks"
    return sorted(p for p in root.iterdir() if (p / MARKER).is_file()) if root.is_dir() else []


def _index(folder: Path) -> tuple[list[Path], dict[bytes, tuple[int, int]]]:
    """Complete chunks and ``image hash → (chunk number, row)``."""
    chunks = _chunks(folder)
    where: dict[bytes, tuple[int, int]] = {}
    for c, chunk in enumerate(chunks):
        for row, h in enumerate(np.load(chunk / "hashes.npy").tolist()):
            where.setdefault(h, (c, row))
    return chunks, where


def autocast_precision(precision: str, device: torch.device) -> str:
    """``bf16``, ``16`` or ``32``: the autocast a pass runs under. Takes vislang's short names or Lightning's
    (``bf16-mixed``, ``32-true`` ...); ``auto`` is resolved for ``device`` by :func:`vislang.run.auto_precision`."""
    if precision == "auto":
        from vislang.run import auto_precision

        precision = auto_precision(device.type)
    short = str(precision).split("-")[0]
    if short not in ("bf16", "16", "32"):
        raise ValueError(f"unknown precision {precision!r}")
    return short


def autocast_context(precision: str, device: torch.device) -> Any:
    """``torch.autocast`` for ``precision`` (any name :func:`autocast_precision` takes) on ``device``;
    disabled for fp32."""
    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(autocast_precision(precision, device))
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _compute(images: Any, positions: np.ndarray, hashes: np.ndarray, extract: Callable[[Tensor], dict[str, Tensor]],
             folder: Path, *, batch_size: int, bar: Any, dtype: Any, precision: str, device: torch.device) -> None:
    """Run ``extract`` over ``images[positions]`` and write the results as one new chunk of ``folder``."""
    (folder / "chunks").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".chunk-", dir=folder / "chunks"))
    try:
        outs: dict[str, np.ndarray] = {}
        n = len(positions)
        t0 = time.perf_counter()
        with torch.inference_mode(), autocast_context(precision, device):
            for start in range(0, n, batch_size):
                idx = positions[start:start + batch_size]
                batch = images[torch.as_tensor(idx) if isinstance(images, Tensor) else idx]
                batch = torch.as_tensor(np.asarray(batch) if not isinstance(batch, Tensor) else batch)
                result = extract(batch.to(device))
                for name, value in result.items():
                    arr = value.detach().float().cpu().numpy()
                    if name not in outs:
                        outs[name] = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype,
                                                               shape=(n, *arr.shape[1:]))
                    outs[name][start:start + len(idx)] = arr
                bar.update(len(idx))
        for arr in outs.values():
            arr.flush()  # type: ignore[attr-defined]
        np.save(tmp / "hashes.npy", hashes)
        (tmp / "meta.json").write_text(json.dumps({"count": n, "seconds": round(time.perf_counter() - t0, 2),
                                                   "outputs": {k: list(v.shape[1:]) for k, v in outs.items()}}))
        del outs
        (tmp / MARKER).write_text("ok\n")
        os.rename(tmp, folder / "chunks" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cached_features(
    key: dict[str, Any],
    images: Any,
    extract: Callable[[Tensor], dict[str, Tensor]],
    *,
    batch_size: int = 64,
    desc: str = "features",
    name: str = "features",
    progress: bool = True,
    dtype: Any = np.float16,
    precision: str = "auto",
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Outputs of ``extract`` for every image, computed once per image and cached on disk.

    ``key``: a JSON-able dict naming everything that determines the outputs apart from the image
    itself, e.g. ``{"backbone": "tf_efficientnet_lite0", "weights": <identity>, "preprocess":
    {...}, "outputs": "pooled+grid", "view": 0}``; change any of it and a fresh entry is used.
    ``images``: uint8 images ``[N, C, H, W]`` (numpy array, memmap or tensor; anything that supports
    ``len`` and integer-array indexing). ``extract``: maps a batch (a tensor on ``device``, same
    dtype as ``images``) to a dict of named tensors whose first dimension is the batch, e.g.
    ``{"pooled": [B, D], "grid": [B, D, h, w]}``; it runs under ``torch.inference_mode`` and
    autocast (``precision``: ``auto`` = bf16 on CPUs with native bf16 and on CUDA, ``32``, ``bf16``, ``16``, or
    Lightning's names); the resolved precision is part of the key, so passes in different precisions never
    share an entry (a fp32 run does not get bf16 features).
    ``dtype``: storage dtype (float16 halves the disk and RAM of float32 and is plenty for features).
    ``desc`` labels the progress bar; ``name`` prefixes the cache folder (keep it free of split names:
    entries are shared by every split, fold and run that uses the same key).

    Returns ``{name: array [N, ...]}`` in the order of ``images``: read-only memmaps when the request
    is exactly one stored chunk, else arrays gathered into RAM. Shows a tqdm bar (rate, ETA) while
    computing; ``STATS`` counts computed and reused images.
    """
    device = torch.device(device)
    precision = autocast_precision(precision, device)
    key = {**key, "precision": precision}
    folder = cache_folder(key, name)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "key.json").is_file():
        (folder / "key.json").write_text(json.dumps(key, indent=2, sort_keys=True, default=str))
    hashes = image_hashes(images)
    chunks, where = _index(folder)
    missing: dict[bytes, int] = {}
    for pos, h in enumerate(hashes.tolist()):
        if h not in where and h not in missing:
            missing[h] = pos
    if missing:
        from tqdm.auto import tqdm

        positions = np.fromiter(missing.values(), dtype=np.int64, count=len(missing))
        with tqdm(total=len(positions), desc=desc, unit="img", disable=not progress, dynamic_ncols=True,
                  leave=False) as bar:
            # one chunk per CHUNK images: an interrupted pass keeps what it has finished
            for start in range(0, len(positions), CHUNK):
                part = positions[start:start + CHUNK]
                _compute(images, part, hashes[part], extract, folder, batch_size=batch_size, bar=bar,
                         dtype=dtype, precision=precision, device=device)
        chunks, where = _index(folder)
    STATS["computed"] += len(missing)
    STATS["reused"] += len(hashes) - len(missing)
    if missing:
        log.info("%s: computed features of %d image(s), reused %d", desc, len(missing), len(hashes) - len(missing))
    located = np.array([where[h] for h in hashes.tolist()], dtype=np.int64).reshape(-1, 2)
    return _assemble(chunks, located)


def _assemble(chunks: list[Path], located: np.ndarray) -> dict[str, np.ndarray]:
    """Gather rows ``located[:, 1]`` of chunks ``located[:, 0]`` for every output."""
    used = np.unique(located[:, 0])
    names = sorted(p.stem for p in chunks[used[0]].glob("*.npy") if p.stem != "hashes")
    out: dict[str, np.ndarray] = {}
    for name in names:
        maps = {int(c): np.load(chunks[c] / f"{name}.npy", mmap_mode="r") for c in used}
        first = maps[int(used[0])]
        if len(used) == 1 and len(first) == len(located) and np.array_equal(located[:, 1], np.arange(len(first))):
            out[name] = first
            continue
        arr = np.empty((len(located), *first.shape[1:]), dtype=first.dtype)
        for c, mm in maps.items():
            pos = np.flatnonzero(located[:, 0] == c)
            rows = located[pos, 1]
            order = np.argsort(rows, kind="stable")
            arr[pos[order]] = mm[rows[order]]
        out[name] = arr
    return out
