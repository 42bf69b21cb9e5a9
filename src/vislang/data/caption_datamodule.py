"""The caption DataModule: dataset → subsets / val-test carve → vocabulary → images decoded once →
frozen-encoder features cached once (:mod:`vislang.data.features`) → whole-batch loaders.

A training batch holds ``B`` images and ``K`` captions of each (``data.captions_per_image``; all 5
on Flickr): ``(inputs, tokens [B, K, L], index [B])`` where ``inputs`` is ``(pooled [B, C],
grid [B, P, C])`` with a frozen encoder or uint8 images ``[B, 3, H, W]`` when it is fine-tuned.
Evaluation batches are ``(inputs, tokens, index)`` over the split's images; ``references[split][i]``
holds the raw reference captions of image ``i``.
"""

from __future__ import annotations

import logging
import warnings
import zlib
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vislang.data.captions import CaptionSplit, Vocab, encode_captions, load_word_vectors
from vislang.data.datamodule import BatchIndexSampler, take
from vislang.data.images import ImageSplit
from vislang.data.registry import create_dataset
from vislang.data.store import decode_split, skipped_files
from vislang.errors import VislangError

log = logging.getLogger("vislang.data")


def _rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


class GridEncoder(torch.nn.Module):
    """uint8 images → the backbone's last feature map as a grid ``[B, h*w, C]`` (timm ``forward_features``)."""

    def __init__(self, backbone: torch.nn.Module, preprocess: torch.nn.Module):
        super().__init__()
        self.backbone, self.preprocess = backbone, preprocess

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        fmap = self.backbone.forward_features(self.preprocess(images))
        return fmap.flatten(2).transpose(1, 2)


def build_encoder(backbone: str, pretrained: str | None) -> tuple[GridEncoder, dict[str, Any]]:
    """The image encoder of a captioner (a timm backbone, offline weights) and its data config."""
    from vislang.models.backbones import image_preprocessing, load_backbone

    model, cfg = load_backbone(backbone, pretrained)
    encoder = GridEncoder(model, image_preprocessing(cfg)).eval()
    with torch.no_grad():
        grid = encoder(torch.zeros(1, *cfg["input_size"], dtype=torch.uint8))
    cfg["grid_shape"] = [int(grid.shape[1]), int(grid.shape[2])]  # positions, channels
    return encoder, cfg


class CaptionBatches(Dataset):
    """Items are whole batches: ``dataset[index_tensor] → (inputs, tokens [B, K, L], index)``."""

    def __init__(self, inputs: Any, tokens: torch.Tensor, counts: torch.Tensor, k: int, flipped: Any = None):
        self.inputs, self.tokens, self.counts, self.k, self.flipped = inputs, tokens, counts, k, flipped

    def _inputs(self, index: torch.Tensor) -> Any:
        if isinstance(self.inputs, tuple):
            pooled, grid = self.inputs
            if self.flipped is not None:  # random horizontal flip of each image: its flipped features
                pick = torch.rand(len(index)) < 0.5
                fp, fg = self.flipped
                pooled = torch.where(pick[:, None], take(fp, index), take(pooled, index))
                grid = torch.where(pick[:, None, None], take(fg, index), take(grid, index))
                return pooled, grid
            return take(pooled, index), take(grid, index)
        return take(self.inputs, index)

    def __getitem__(self, index: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
        counts = take(self.counts, index)
        if self.k == self.tokens.shape[1] and bool((counts == self.k).all()):
            which = torch.arange(self.k).expand(len(index), -1)
        else:  # K captions per image drawn from the ones it has
            which = (torch.rand(len(index), self.k) * counts[:, None]).long()
        tokens = self.tokens[index[:, None], which]
        return self._inputs(index), tokens, index

    def __len__(self) -> int:
        return len(self.counts)


class CaptionDataModule(L.LightningDataModule):
    """See the module docstring. After :meth:`setup`: ``vocab``, ``references``, ``images`` (files),
    ``split_sizes``, ``encoder_config``, ``word_vectors`` and ``notes``."""

    def __init__(self, cfg: Any, seed: int = 0, progress: bool = True, vocab: Vocab | None = None):
        super().__init__()
        self.cfg, self.seed, self.progress = cfg, seed, progress  # cfg: the whole CaptionExperimentConfig
        self.vocab = vocab
        self.references: dict[str, list[list[str]]] = {}
        self.image_files: dict[str, list[Path]] = {}
        self.inputs: dict[str, Any] = {}
        self.tokens: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self.flipped: Any = None
        self.word_vectors: np.ndarray | None = None
        self.notes: list[str] = []
        self.encoder_config: dict[str, Any] = {}
        self._ready = False

    # -- setup ------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        d, m = self.cfg.data, self.cfg.model
        options = dict(d.options)
        if d.images_path:
            options["images_path"] = d.images_path
        dataset = create_dataset(d.dataset, path=d.path, skip_missing=d.skip_missing, min_words=d.min_words, **options)
        if not hasattr(dataset, "splits") or not all(isinstance(s, CaptionSplit) for s in dataset.splits.values()):
            raise VislangError(f"Dataset '{d.dataset}' is not a caption dataset; use flickr8k, captions, "
                               "coco_captions, karpathy_captions or caption_csv.")
        self.notes = list(dataset.notes)
        splits = self._carve(dict(dataset.splits))
        if self.vocab is None:
            train_caps = [c for caps in splits["train"].captions for c in caps]
            self.vocab = Vocab.build(train_caps, d.min_freq, d.max_vocab)
        if d.embeddings:
            self.word_vectors, found = load_word_vectors(d.embeddings, self.vocab)
            self.notes.append(f"{found:,} of {len(self.vocab):,} words found in {d.embeddings}")
        encoder, self.encoder_config = build_encoder(m.encoder, m.pretrained)
        size = d.image_size or tuple(self.encoder_config["input_size"][1:])
        for name, split in splits.items():
            images, keep = self._decode(dataset, name, split, size)
            split = split.take(keep) if len(keep) != len(split) else split
            tokens, owner = encode_captions(self.vocab, split.captions, d.max_length)
            counts = np.bincount(owner, minlength=len(split))
            kmax = int(counts.max())
            per_image = np.zeros((len(split), kmax, tokens.shape[1]), dtype=np.int64)
            slot = np.concatenate([np.arange(c) for c in counts])
            per_image[owner, slot] = tokens
            self.tokens[name] = torch.from_numpy(per_image)
            self.counts[name] = torch.from_numpy(counts)
            self.references[name] = split.captions
            self.image_files[name] = list(split.images)
            if m.freeze:
                self.inputs[name] = self._features(encoder, images, name, flip=False)
                if name == "train" and d.flip_augment:
                    self.flipped = self._features(encoder, images, name, flip=True)
            else:
                self.inputs[name] = torch.from_numpy(np.array(images))
        self._ready = True

    def _carve(self, splits: dict[str, CaptionSplit]) -> dict[str, CaptionSplit]:
        d = self.cfg.data
        for key in d.subset:
            if key not in ("train", "val", "test"):
                raise VislangError(f"data.subset names split '{key}'; use train, val or test.")
        if d.cv_folds is not None:
            splits["train"], splits["val"] = self._fold(splits["train"], splits.pop("val", None))
        for name in ("test", "val"):
            if name not in splits:
                frac = d.test_fraction if name == "test" else d.val_fraction
                train = splits["train"]
                n = max(1, round(len(train) * frac))
                if frac <= 0 or n >= len(train):
                    continue
                order = _rng(self.seed, f"carve/{name}").permutation(len(train))
                splits[name], splits["train"] = train.take(np.sort(order[:n])), train.take(np.sort(order[n:]))
        for name, cap in d.subset.items():
            if name in splits and cap < len(splits[name]):
                pick = np.sort(_rng(self.seed, f"subset/{name}").permutation(len(splits[name]))[:cap])
                splits[name] = splits[name].take(pick)
        return {k: splits[k] for k in ("train", "val", "test") if k in splits}

    def _fold(self, train: CaptionSplit, val: CaptionSplit | None) -> tuple[CaptionSplit, CaptionSplit]:
        """Fold ``cv_fold`` of a seeded ``cv_folds``-fold split of the training images (pooled with the
        dataset's own val split, if any) as validation. Folds are drawn over images, so the captions of
        one image are never split between training and validation (grouped k-fold)."""
        from sklearn.model_selection import KFold

        d = self.cfg.data
        if val is not None:
            train = CaptionSplit([*train.images, *val.images], [*train.captions, *val.captions])
        if len(train) < d.cv_folds:
            raise VislangError(f"data.cv_folds={d.cv_folds}: only {len(train)} training images; use fewer folds.")
        folds = KFold(n_splits=d.cv_folds, shuffle=True, random_state=int(_rng(self.seed, "cv").integers(2**31)))
        train_idx, val_idx = list(folds.split(np.zeros(len(train))))[d.cv_fold]
        return train.take(train_idx), train.take(val_idx)

    def _decode(self, dataset: Any, name: str, split: CaptionSplit, size: Any) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images [N, 3, H, W] (decoded once into the store) and the indices of the images kept."""
        images, _ = decode_split(ImageSplit(list(split.images), np.zeros(len(split))), size=size, channels=3,
                                 skip_corrupt=self.cfg.data.skip_corrupt, name=f"{dataset.name}/{name}",
                                 fingerprint=dataset.fingerprint, progress=self.progress)
        skipped = set(skipped_files(images))
        keep = np.array([i for i, p in enumerate(split.images) if str(p) not in skipped], dtype=np.int64)
        if skipped:
            self.notes.append(f"{name}: skipped {len(skipped)} unreadable image(s), e.g. {sorted(skipped)[0]}")
        return images, keep

    def _features(self, encoder: GridEncoder, images: np.ndarray, name: str, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from vislang.data.features import cached_features
        from vislang.run import resolve_accelerator, resolve_precision

        m = self.cfg.model
        device = resolve_accelerator(self.cfg)
        key = {"task": "caption", "backbone": m.encoder, "weights": self.encoder_config["weights"],
               "input_size": self.encoder_config["input_size"], "mean": self.encoder_config["mean"],
               "std": self.encoder_config["std"], "outputs": "grid", "view": "hflip" if flip else "identity"}
        encoder.eval().to(device)

        def extract(batch: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"grid": encoder(batch.flip(-1) if flip else batch)}

        out = cached_features(key, images, extract, batch_size=64, desc=f"{m.encoder} features {name}"
                              + (" (flipped)" if flip else ""), progress=self.progress, device=device,
                              precision=resolve_precision(self.cfg, device))  # the run's own: a fp32 run gets fp32 grids
        with warnings.catch_warnings():  # a read-only memmap of the cache, only ever read: no copy needed
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            grid = torch.from_numpy(np.ascontiguousarray(out["grid"]))
        return grid.float().mean(1).to(grid.dtype), grid

    # -- facts and loaders ----------------------------------------------------------------------

    @property
    def split_sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.references.items()}

    def grid_shape(self) -> tuple[int, int]:
        """(positions, channels) of the encoder grid."""
        p, c = self.encoder_config["grid_shape"]
        return int(p), int(c)

    def dataloader(self, split: str, shuffle: bool = False, batch_size: int | None = None) -> DataLoader:
        if split not in self.references:
            raise VislangError(f"Split '{split}' does not exist; this dataset has {', '.join(self.references)}.")
        d = self.cfg.data
        n = len(self.references[split])
        bs = batch_size or (d.batch_size if shuffle else d.eval_batch_size)
        k = d.captions_per_image if shuffle else int(self.tokens[split].shape[1])
        flipped = self.flipped if shuffle and split == "train" else None
        sampler = BatchIndexSampler(n, bs, shuffle=shuffle, seed=self.seed, drop_last=shuffle and n > bs and 0 < n % bs < bs / 2)
        data = CaptionBatches(self.inputs[split], self.tokens[split], self.counts[split], k, flipped)
        return DataLoader(data, sampler=sampler, batch_size=None, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val" if "val" in self.references else "test")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test" if "test" in self.references else "val")
