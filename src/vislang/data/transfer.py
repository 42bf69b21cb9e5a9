"""The image data path of pretrained backbones: their preprocessing, balanced sampling and cached features.

* :class:`TransferTransform`: batched augmentation at the stored size, then the backbone's own
  preprocessing (grayscale → RGB, its mean/std, resize to its input size with its interpolation),
  all on whole batches on the training device; batches of cached features pass through untouched.
* :class:`TransferDataModule`: :class:`~vislang.data.datamodule.ImageDataModule` plus
  ``data.sampler: balanced`` and, once :func:`attach_features` has run, loaders that serve cached
  backbone features instead of images (training picks one cached view per image per epoch;
  evaluation gets all test-time views ``[B, V, D]``, which the task averages).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from vislang.config import AugmentConfig, DataConfig
from vislang.data.augment import BatchTransform
from vislang.data.datamodule import BatchIndexSampler, ImageDataModule, _rng, stratified_sample, take
from vislang.data.features import cached_features
from vislang.data.sampling import BalancedBatchSampler
from vislang.errors import VislangError
from vislang.models.backbones import Preprocess, image_preprocessing

log = logging.getLogger("vislang.data")


# timm.create_model arguments that only act in train mode (dropout, stochastic depth, DropBlock)
TRAIN_ONLY_TIMM_KWARGS = frozenset({"drop_rate", "drop_path_rate", "drop_block_rate"})


def is_feature_batch(x: Any) -> bool:
    """Cached features are float ``[B, D]`` or ``[B, V, D]``, or a tuple (a frozen prefix's grid and pooled
    features); images are uint8 ``[B, C, H, W]``."""
    return isinstance(x, (tuple, list)) or (x.is_floating_point() and x.dim() in (2, 3))


class TransferTransform(nn.Module):
    """``forward(x_uint8 [B,C,H,W], train) → float [B,3,h,w]`` ready for a pretrained backbone."""

    def __init__(self, aug: AugmentConfig, preprocess: dict[str, Any], channels: int = 3) -> None:
        super().__init__()
        self.aug = aug
        self.geometry = BatchTransform(aug, [0.0] * channels, [1.0] * channels)  # crop/translate/flip only
        self.preprocess: Preprocess = image_preprocessing(preprocess)

    def set_epoch(self, epoch: int) -> None:
        self.geometry.set_epoch(epoch)  # crop_epochs

    def forward(self, x: Any, train: bool = False) -> Any:
        if is_feature_batch(x):
            return x
        if x.dim() == 3:
            return self.forward(x[None], train)[0]
        if train:
            x = self.geometry.geometric(x)
        out = self.preprocess(x)
        if train and self.aug.cutout:
            size = max(1, round(self.aug.cutout * out.shape[-1] / x.shape[-1]))
            out = BatchTransform.cutout(out, size)
        return out


class FeatureBatchDataset(Dataset):
    """Whole batches of cached features: ``[N, V, ...]`` float16 in RAM → float32 batches.

    ``features`` is one tensor (pooled features ``[N, V, D]``) or a tuple of them sharing ``N`` and ``V`` (a
    frozen prefix's grids ``[N, V, C, h, w]`` and its pooled feature layers ``[N, V, P]``), served as a tuple.
    Training (``pick_view``): one random view per item (torch's global RNG, seeded by the run), the same one
    in every tensor; evaluation: all ``views`` (``[B, V, ...]``) or, with one view, ``[B, ...]``.
    """

    def __init__(self, features: Tensor | tuple[Tensor, ...], labels: Tensor, pick_view: bool,
                 views: int | None = None) -> None:
        self.parts = features if isinstance(features, tuple) else (features,)
        self.single = not isinstance(features, tuple)
        self.labels, self.pick_view = labels, pick_view
        self.views = views or self.parts[0].shape[1]

    def __getitem__(self, index: Tensor) -> tuple[Any, Tensor]:
        n_views = self.parts[0].shape[1]
        view = torch.randint(n_views, (len(index),)) if self.pick_view and n_views > 1 else None
        out = []
        for part in self.parts:
            if view is not None and part.is_contiguous():  # rows of the [N*V, ...] view: one row-wise copy
                feats = take(part.flatten(0, 1), torch.as_tensor(index) * n_views + view)
            elif view is not None:
                feats = take(part, index)[torch.arange(len(index)), view]
            elif self.views == 1 or self.pick_view:
                feats = take(part[:, 0], index)
            else:
                feats = take(part[:, :self.views], index)
            out.append(feats.float())
        return (out[0] if self.single else tuple(out)), take(self.labels, index)

    def __len__(self) -> int:
        return len(self.labels)


class TransferDataModule(ImageDataModule):
    """ImageDataModule with balanced sampling, a backbone's preprocessing and cached features."""

    def __init__(self, cfg: DataConfig, seed: int = 0, progress: bool = True,
                 preprocess: dict[str, Any] | None = None) -> None:
        super().__init__(cfg, seed, progress)
        self.preprocess = preprocess
        # split -> [N, V, D] float16 pooled features, or a frozen prefix's (grids [N, V, C, h, w], pooled [N, V, P])
        self.features: dict[str, Tensor | tuple[Tensor, Tensor]] = {}
        self.eval_views: dict[str, int] = {}

    def setup(self, stage: str | None = None) -> None:
        """ImageDataModule's setup, then a check that there is something to classify."""
        if self.dataset is not None:
            return
        super().setup(stage)
        self._carve_test()
        if self.num_classes < 2:
            where = self.cfg.path or self.cfg.dataset
            raise VislangError(f"{where} has a single class ('{self.classes[0]}'): a classifier needs at least two. "
                               "Put the images of each class in its own sub-folder (two or more class folders).")

    def _carve_test(self) -> None:
        """``data.test_fraction``: a stratified, seeded test split carved from train when the data has none."""
        frac = getattr(self.cfg, "test_fraction", 0.0)
        if not frac or "test" in self.labels:
            return
        labels = self.labels["train"].numpy()
        total = len(labels) + len(self.labels.get("val", ()))  # a fraction of all the labelled images
        n_test = max(1, round(total * frac))
        test_idx = torch.from_numpy(stratified_sample(labels, n_test, _rng(self.seed, "test")))
        keep = torch.ones(len(labels), dtype=torch.bool)
        keep[test_idx] = False
        if not keep.any():
            raise VislangError(f"data.test_fraction={frac} leaves no training images out of {len(labels)}.")
        for store in (self.images, self.labels):
            store["test"], store["train"] = store["train"][test_idx], store["train"][keep]

    @property
    def normalization(self) -> tuple[list[float], list[float]]:
        """A pretrained backbone's own mean/std (0..255 scale); the dataset's otherwise."""
        if self.preprocess is None:
            return super().normalization
        return ([m * 255.0 for m in self.preprocess["mean"]], [s * 255.0 for s in self.preprocess["std"]])

    def dataloader(self, split: str, shuffle: bool = False, batch_size: int | None = None) -> DataLoader:
        """Like ImageDataModule's, plus balanced sampling (training) and cached features when attached."""
        loader = super().dataloader(split, shuffle, batch_size)
        sampler = loader.sampler
        dataset = loader.dataset
        if split in self.features:
            dataset = FeatureBatchDataset(self.features[split], self.labels[split], pick_view=shuffle,
                                          views=self.eval_views.get(split))
        if shuffle and self.cfg.sampler == "balanced":
            assert isinstance(sampler, BatchIndexSampler)
            sampler = BalancedBatchSampler(self.labels[split], sampler.batch_size, seed=self.seed,
                                           drop_last=sampler.drop_last)
        if dataset is loader.dataset and sampler is loader.sampler:
            return loader
        return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=0)


# ------------------------------------------------------------------------------ feature cache


def _view_seed(seed: int, view: str) -> int:
    return zlib.crc32(f"{seed}/{view}".encode())


def view_names(cfg: DataConfig, split: str, tta_flip: bool) -> list[str]:
    """Cached views of a split: training gets ``clean``, ``flip`` (augment.flip) and ``aug<k>`` random
    augmentations up to ``data.feature_views``; evaluation splits get ``clean`` (+ ``flip`` for flip TTA)."""
    if split != "train":
        return ["clean", "flip"] if tta_flip else ["clean"]
    views = ["clean"] + (["flip"] if cfg.augment.flip else [])
    if cfg.augment.random_views:
        views += [f"aug{k}" for k in range(1, cfg.feature_views)]
    return views[:cfg.feature_views]


def _cache_base(preprocess: dict[str, Any]) -> dict[str, Any]:
    """What keys every cached pass of a backbone apart from its outputs and view: architecture, weights, build
    arguments and preprocessing."""
    # features are computed in eval mode, where timm's train-time regularisers do nothing: they do not key
    # the cache (a frozen run with another drop_path_rate reuses the same features)
    build = {k: v for k, v in preprocess.get("timm_kwargs", {}).items() if k not in TRAIN_ONLY_TIMM_KWARGS}
    return {"backbone": preprocess["backbone"], "weights": preprocess.get("weights"), "timm_kwargs": build,
            "preprocess": {k: preprocess[k] for k in ("input_size", "interpolation", "mean", "std")}}


@torch.no_grad()
def _cached_views(model: nn.Module, images: Tensor, views: list[str], base: dict[str, Any],
                  run: Callable[[Tensor], dict[str, Tensor]], *, preprocess: dict[str, Any], aug: AugmentConfig,
                  seed: int, desc: str, progress: bool, batch_size: int, device: torch.device, precision: str,
                  ) -> list[dict[str, np.ndarray]]:
    """``run(preprocessed batch)`` of every image in each view (clean, flip, aug<k>), from the cache: one dict of
    outputs per view. The model runs in eval mode on ``device`` and goes back as it was."""
    pre = image_preprocessing(preprocess).to(device)
    geometry = BatchTransform(aug, [0.0] * images.shape[1], [1.0] * images.shape[1]).to(device)
    was_training = model.training
    home = next(model.parameters()).device
    model.eval().to(device)
    out = []
    try:
        for view in views:
            key = dict(base, view=view)
            if view.startswith("aug"):
                key.update(augment=aug.model_dump(), seed=seed)

            def extract(x: Tensor, view: str = view) -> dict[str, Tensor]:
                if view == "flip":
                    x = x.flip(-1)
                elif view.startswith("aug"):
                    x = geometry.geometric(x)
                return run(pre(x))

            with torch.random.fork_rng():
                torch.manual_seed(_view_seed(seed, view))
                out.append(cached_features(key, images, extract, batch_size=batch_size, progress=progress,
                                           desc=f"{desc}/{view}", name=f"{preprocess['backbone']}-{view}",
                                           device=device, precision=precision))
    finally:
        model.train(was_training).to(home)
    return out


def _pooled(grid: Tensor, suffix: str = "", pool_grid: int = 0) -> dict[str, Tensor]:
    """Average and max pooling of a grid (the ops of timm's SelectAdaptivePool2d), both cached so that changing
    model.pooling reuses the cache; with ``pool_grid`` = g, also the averages over g x g regions (as
    ``PretrainedClassifier.pooled`` gives them)."""
    out = {"avg" + suffix: F.adaptive_avg_pool2d(grid, 1).flatten(1),
           "max" + suffix: F.adaptive_max_pool2d(grid, 1).flatten(1)}
    if pool_grid:
        out[f"avg{pool_grid}x{pool_grid}{suffix}"] = F.adaptive_avg_pool2d(grid, pool_grid).flatten(1)
    return out


def _pooling_parts(model: nn.Module, regions: bool = True) -> list[str]:
    """The cached outputs that make up a pooled grid of ``model.forward_features``, in its order (``regions``: with
    the ``pool_grid`` region averages, which the feature_layers have and the last grid has not)."""
    parts = {"avg": ["avg"], "max": ["max"], "avgmax": ["avg", "max"]}[getattr(model, "pooling", "avg")]
    grid = getattr(model, "pool_grid", 0) if regions else 0
    return parts + ([f"avg{grid}x{grid}"] if grid else [])


def _pooling_key(model: nn.Module) -> dict[str, Any]:
    """What the pooled outputs add to a cache key: nothing without ``pool_grid``, so that those runs keep their
    existing entries."""
    grid = getattr(model, "pool_grid", 0)
    return {"pool_grid": grid} if grid else {}


def _tensor(array: np.ndarray) -> Tensor:
    """A cached output as a tensor: copied only when it is a read-only memmap (one stored chunk); arrays that
    :func:`cached_features` already gathered into RAM are used as they are (a frozen prefix's grids are GBs)."""
    return torch.from_numpy(array if array.flags.writeable else np.array(array))


def split_features(model: nn.Module, images: Tensor, views: list[str], *, preprocess: dict[str, Any],
                   aug: AugmentConfig, seed: int, desc: str, progress: bool = True,
                   batch_size: int = 64, device: str | torch.device = "cpu", precision: str = "auto") -> Tensor:
    """Pooled features ``[N, V, D]`` (float16) of the backbone for each view, as ``model.forward_features``
    gives them (its ``pooling``: avg, max or avgmax = both concatenated), from the cache. ``precision``
    (the run's training precision) sets the autocast of the pass and, in :func:`cached_features`, keys the
    cache: a bf16 run and an fp32 run never share features."""
    base = {"kind": "avg+max pooled", **_cache_base(preprocess), **_pooling_key(model)}
    layers = list(getattr(model, "feature_layers", []))
    if layers:  # only then: runs without them keep their existing cache entries
        base["layers"] = layers
    sources = ["", *(f"@{name}" for name in layers)]  # output-name suffixes: the last grid, then each layer

    def run(x: Tensor) -> dict[str, Tensor]:
        result: dict[str, Tensor] = {}
        for suffix, grid in zip(sources, model.forward_grids(x), strict=True):  # regions: of feature_layers only
            result.update(_pooled(grid, suffix, getattr(model, "pool_grid", 0) if suffix else 0))
        return result

    pooled = _cached_views(model, images, views, base, run, preprocess=preprocess, aug=aug, seed=seed, desc=desc,
                           progress=progress, batch_size=batch_size, device=torch.device(device),
                           precision=precision)
    # in forward_features' order: each source's pooling(s), the regions for feature_layers
    keys = [k + suffix for suffix in sources for k in _pooling_parts(model, regions=bool(suffix))]
    return torch.stack([torch.cat([_tensor(p[k]) for k in keys], 1) for p in pooled], 1)


def prefix_features(model: nn.Module, images: Tensor, views: list[str], *, preprocess: dict[str, Any],
                    aug: AugmentConfig, seed: int, desc: str, progress: bool = True, batch_size: int = 64,
                    device: str | torch.device = "cpu", precision: str = "auto") -> tuple[Tensor, Tensor]:
    """For a backbone frozen up to a module (``model.prefix_split()``): the frozen prefix's output grids
    ``[N, V, C, h, w]`` and the pooled outputs of the ``feature_layers`` inside it ``[N, V, P]`` (float16, in
    ``model.forward_from_prefix``'s order), for each view, from the cache."""
    split = model.prefix_split()
    assert split is not None, "the model has no frozen prefix to cache"
    layers = model.prefix_layers()
    base = {"kind": "prefix grid", "upto": split[0][-1], "layers": layers, **_cache_base(preprocess),
            **(_pooling_key(model) if layers else {})}

    def run(x: Tensor) -> dict[str, Tensor]:
        grid, caught = model.prefix_outputs(x)
        result = {"grid": grid}
        for name in layers:
            result.update(_pooled(caught[name], f"@{name}", model.pool_grid))
        return result

    cached = _cached_views(model, images, views, base, run, preprocess=preprocess, aug=aug, seed=seed, desc=desc,
                           progress=progress, batch_size=batch_size, device=torch.device(device),
                           precision=precision)
    parts = _pooling_parts(model)
    grids = torch.stack([_tensor(c["grid"]) for c in cached], 1)
    pooled = torch.stack([torch.cat([_tensor(c[f"{k}@{name}"]) for name in layers for k in parts]
                                    or [torch.zeros(len(images), 0, dtype=grids.dtype)], 1) for c in cached], 1)
    return grids, pooled


def attach_features(model: nn.Module, dm: TransferDataModule, *, tta_flip: bool, seed: int,
                    progress: bool = True, splits: list[str] | None = None, device: str | torch.device = "cpu",
                    precision: str = "auto", prefix: bool = False) -> None:
    """Compute (or read back) the frozen backbone's features of ``splits`` (default: all) on ``device``, in
    the run's ``precision``, and make ``dm`` serve them; other splits are served as images (the checkpoint
    holds the whole model). ``prefix``: the backbone is frozen up to a module, and what is cached is the frozen
    prefix's output (:func:`prefix_features`)."""
    assert dm.preprocess is not None
    pre = dict(dm.preprocess, weights=getattr(model, "data_cfg", {}).get("weights"),
               timm_kwargs=getattr(model, "data_cfg", {}).get("timm_kwargs", {}))
    for split, images in dm.images.items():
        if splits is not None and split not in splits:
            continue
        views = view_names(dm.cfg, split, tta_flip)
        compute = prefix_features if prefix else split_features
        dm.features[split] = compute(model, images, views, preprocess=pre, aug=dm.cfg.augment, seed=seed,
                                     desc=f"{pre['backbone']}:{split}", progress=progress, device=device,
                                     precision=precision)
        if split == "train":
            dm.eval_views[split] = 1  # evaluating the train split uses the un-augmented view
    train = dm.features.get("train")
    cached = (train[0] if isinstance(train, tuple) else train).shape[1] if train is not None else 0
    if dm.cfg.feature_views > 1 and train is not None and cached < dm.cfg.feature_views:
        log.warning("data.feature_views=%d but data.augment gives only %d distinct view(s); cached %d",
                    dm.cfg.feature_views, cached, cached)
