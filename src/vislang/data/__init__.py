"""vislang's data layer: fetch → verify → extract → read → decode once into a uint8 store → batches.

``ImageDataModule`` and ``BatchTransform`` (which import torch and Lightning) are loaded on first
use, so that decoding worker processes, which import :mod:`vislang.data.store`, start quickly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vislang.data.fetch import Archive, cache_dir, fetch, mirror_dir
from vislang.data.images import ImageDataset, ImageSplit
from vislang.data.registry import DATASETS, create_dataset, list_datasets, register_dataset
from vislang.data.store import channel_stats, decode_split, load_image

if TYPE_CHECKING:
    from vislang.data.augment import BatchTransform
    from vislang.data.datamodule import ImageDataModule

__all__ = [
    "DATASETS",
    "Archive",
    "BatchTransform",
    "ImageDataModule",
    "ImageDataset",
    "ImageSplit",
    "cache_dir",
    "channel_stats",
    "create_dataset",
    "decode_split",
    "fetch",
    "list_datasets",
    "load_image",
    "mirror_dir",
    "register_dataset",
]


def __getattr__(name: str) -> Any:
    if name == "ImageDataModule":
        from vislang.data.datamodule import ImageDataModule

        return ImageDataModule
    if name == "BatchTransform":
        from vislang.data.augment import BatchTransform

        return BatchTransform
    raise AttributeError(f"module 'vislang.data' has no attribute {name!r}")
