"""The image DataModule: dataset → subsets → val carve → decoded uint8 tensors in RAM → whole-batch loaders.

The epoch loop does no per-sample Python work: the sampler yields one index tensor per batch
and the dataset slices the in-RAM uint8 tensor with it, so one "item" is a whole batch
``(images uint8 [B,C,H,W], labels int64 [B])``. Augmentation and normalisation then run on the
training device (:class:`vislang.data.augment.BatchTransform`).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vislang.config import DataConfig
from vislang.data.augment import BatchTransform
from vislang.data.images import ImageDataset, ImageSplit
from vislang.data.registry import create_dataset
from vislang.data.store import channel_stats, decode_split, skipped_files
from vislang.errors import VislangError

log = logging.getLogger("vislang.data")


def stratified_sample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` items drawn without replacement keeping class proportions.

    Each class gets its proportional share (largest remainders break ties), so small classes
    keep their place in small subsets.
    """
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / len(labels)
    share = np.floor(exact).astype(int)
    order = np.lexsort((rng.random(len(classes)), -(exact - share)))  # largest remainder first
    share[order[: n - share.sum()]] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, share, strict=True)]
    return np.sort(np.concatenate(picked))


def take(t: torch.Tensor, index: torch.Tensor | np.ndarray | list[int]) -> torch.Tensor:
    """``t[index]`` along dim 0, through ``index_select`` when ``index`` is an integer tensor: the same
    rows, but on the CPU a row-wise copy, ~5x faster than advanced indexing's per-element kernel
    (0.06 vs 0.32 ms for a batch of 256 CIFAR images; that difference is ~1% of an MLP training step)."""
    if isinstance(index, torch.Tensor) and index.dim() == 1 and not index.is_floating_point() \
            and index.dtype != torch.bool:
        return t.index_select(0, index.to(device=t.device, dtype=torch.long))
    return t[index]


def _rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


class BatchDataset(Dataset):
    """A dataset whose items are whole batches: ``dataset[index_tensor] → (images, labels)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return take(self.images, index), take(self.labels, index)

    def __len__(self) -> int:
        return len(self.labels)


class AlternatingFlipDataset(BatchDataset):
    """Training batches with airbench's alternating flip: image ``i`` is mirrored in epoch ``e`` when
    ``side[i] XOR (e odd)``, with ``side`` a fixed, seeded coin per image. Every image is seen both
    ways every two epochs (random flipping leaves a quarter of them one way round for both epochs).
    The epoch is the sampler's (Lightning calls its ``set_epoch``), so a resumed run continues the pattern.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, sampler: BatchIndexSampler, seed: int) -> None:
        super().__init__(images, labels)
        self.sampler = sampler
        generator = torch.Generator().manual_seed(seed * 1_000_003 + 7919)
        self.side = torch.rand(len(labels), generator=generator) < 0.5

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = super().__getitem__(index)
        mirror = take(self.side, index) ^ bool(self.sampler.epoch % 2)
        images = torch.where(mirror.view(-1, *[1] * (images.dim() - 1)), images.flip(-1), images)
        return images, labels


class BatchIndexSampler(Sampler[torch.Tensor]):
    """Yields one index tensor per batch, from a permutation seeded by (seed, epoch) when shuffling.

    Lightning calls :meth:`set_epoch` (also through its DDP sampler wrapper), so each epoch sees a
    different, reproducible order.
    """

    def __init__(
        self, n: int, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = (
            n,
            batch_size,
            shuffle,
            seed,
            drop_last,
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start : start + self.batch_size]

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)


class ImageDataModule(L.LightningDataModule):
    """Loads ``cfg.dataset`` and serves uint8 batches; see the module docstring.

    After :meth:`setup`: ``classes``, ``class_names``, ``num_classes``, ``input_shape`` (C,H,W),
    ``mean``/``std`` (train split, 0..255 scale), ``split_sizes``, ``class_counts``, ``skipped``.
    """

    def __init__(self, cfg: DataConfig, seed: int = 0, progress: bool = True) -> None:
        super().__init__()
        self.cfg, self.seed, self.progress = cfg, seed, progress
        self.dataset: ImageDataset | None = None
        self.images: dict[str, torch.Tensor] = {}
        self.labels: dict[str, torch.Tensor] = {}
        self.skipped: dict[str, list[str]] = {}
        self.mean: list[float] = []
        self.std: list[float] = []

    # -- setup ------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Load, subset, carve val, decode (once, cached) and hold every split in RAM. Idempotent."""
        if self.dataset is not None:
            return
        cfg = self.cfg
        dataset = create_dataset(cfg.dataset, path=cfg.path, **cfg.options)
        splits = dict(dataset.splits)
        known = set(splits) | {"val"}
        for key in cfg.subset:
            if key not in known:
                raise VislangError(
                    f"data.subset names split '{key}', but dataset '{dataset.name}' has splits "
                    f"{', '.join(sorted(known))}."
                )
        splits = {name: self._cap(name, split) for name, split in splits.items()}
        if cfg.cv_folds is not None:
            splits["train"], splits["val"] = self._cv_split(splits["train"], splits.pop("val", None))
        elif "val" not in splits and cfg.val_fraction > 0:
            splits["train"], splits["val"] = self._carve_val(splits["train"])
            splits["val"] = self._cap("val", splits["val"])
        for name, split in splits.items():
            images, labels = decode_split(
                split,
                size=cfg.image_size,
                channels=cfg.channels,
                skip_corrupt=cfg.skip_corrupt,
                name=f"{dataset.name}/{name}",
                fingerprint=dataset.fingerprint,
                progress=self.progress,
            )
            self.skipped[name] = skipped_files(images)
            if name == "train":
                self.mean, self.std = channel_stats(images)
            self.images[name] = torch.from_numpy(np.array(images))  # copy the memmap into RAM
            self.labels[name] = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.dataset = dataset

    def _cap(self, name: str, split: ImageSplit) -> ImageSplit:
        cap = self.cfg.subset.get(name)
        if cap is None or cap >= len(split):
            return split
        return split.take(stratified_sample(split.labels, cap, _rng(self.seed, f"subset/{name}")))

    def _carve_val(self, train: ImageSplit) -> tuple[ImageSplit, ImageSplit]:
        n_val = max(1, round(len(train) * self.cfg.val_fraction))
        if n_val >= len(train):
            raise VislangError(
                f"data.val_fraction={self.cfg.val_fraction} leaves no training images out of {len(train)}."
            )
        val_idx = stratified_sample(train.labels, n_val, _rng(self.seed, "val"))
        train_idx = np.setdiff1d(np.arange(len(train)), val_idx)
        return train.take(train_idx), train.take(val_idx)

    def _cv_split(self, train: ImageSplit, val: ImageSplit | None) -> tuple[ImageSplit, ImageSplit]:
        """Fold ``cv_fold`` of a stratified, seeded ``cv_folds``-fold split of train (pooled with the
        dataset's own val split, if any) as validation, the other folds as train."""
        from sklearn.model_selection import StratifiedKFold

        if val is not None:
            items = np.concatenate([train.items, val.items]) if train.is_array else [*train.items, *val.items]
            train = ImageSplit(items, np.concatenate([train.labels, val.labels]))
        k = self.cfg.cv_folds
        smallest = int(np.unique(train.labels, return_counts=True)[1].min())
        if smallest < k:
            raise VislangError(f"data.cv_folds={k}: a class has only {smallest} training images; "
                               f"use at most {max(2, smallest)} folds or a larger data.subset.")
        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=int(_rng(self.seed, "cv").integers(2**31)))
        train_idx, val_idx = list(folds.split(np.zeros(len(train)), train.labels))[self.cfg.cv_fold]
        return train.take(train_idx), train.take(val_idx)

    # -- what the trainer and models need ----------------------------------------------------

    def _require(self) -> ImageDataset:
        if self.dataset is None:
            raise RuntimeError("call ImageDataModule.setup() first")
        return self.dataset

    @property
    def classes(self) -> list[str]:
        return self._require().classes

    @property
    def class_names(self) -> list[str]:
        return self._require().class_names

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        self._require()
        c, h, w = self.images["train"].shape[1:]
        return int(c), int(h), int(w)

    @property
    def split_sizes(self) -> dict[str, int]:
        self._require()
        return {name: len(labels) for name, labels in self.labels.items()}

    @property
    def class_counts(self) -> dict[str, list[int]]:
        self._require()
        return {
            name: torch.bincount(labels, minlength=self.num_classes).tolist()
            for name, labels in self.labels.items()
        }

    @property
    def normalization(self) -> tuple[list[float], list[float]]:
        """Per-channel (mean, std) on the 0..255 scale that ``cfg.normalize`` asks for: the train split's
        statistics, or (0, 255), which only scales to 0..1."""
        self._require()
        if self.cfg.normalize == "dataset":
            return list(self.mean), list(self.std)
        channels = self.input_shape[0]
        return [0.0] * channels, [255.0] * channels

    def transform(self) -> BatchTransform:
        """The batch transform for this data: augmentation from ``cfg.augment``, normalisation per ``cfg.normalize``."""
        return BatchTransform(self.cfg.augment, *self.normalization)

    # -- loaders ------------------------------------------------------------------------------

    def dataloader(self, split: str, shuffle: bool = False, batch_size: int | None = None) -> DataLoader:
        """Whole-batch loader over ``split``; train-style drop of a tiny last batch only when shuffling."""
        self._require()
        if split not in self.labels:
            raise VislangError(f"Split '{split}' does not exist; this dataset has {', '.join(self.labels)}.")
        n = len(self.labels[split])
        bs = batch_size or (self.cfg.batch_size if shuffle else self.cfg.eval_batch_size)
        # drop the last batch only when it would be tiny (< half a batch) and there are others
        drop_last = shuffle and n > bs and 0 < n % bs < bs / 2
        sampler = BatchIndexSampler(n, bs, shuffle=shuffle, seed=self.seed, drop_last=drop_last)
        if shuffle and self.cfg.augment.alternating_flip:
            dataset: BatchDataset = AlternatingFlipDataset(self.images[split], self.labels[split], sampler, self.seed)
        else:
            dataset = BatchDataset(self.images[split], self.labels[split])
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val" if "val" in self.labels else "test")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test" if "test" in self.labels else "val")
