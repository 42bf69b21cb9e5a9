"""The DataModule: stratified seeded subsets and val carve, reproducible whole-batch loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

from vislang.config import DataConfig
from vislang.data.datamodule import ImageDataModule, stratified_sample
from vislang.errors import VislangError


def _dm(seed: int = 0, **kwargs) -> ImageDataModule:  # noqa: ANN003
    cfg = DataConfig(dataset="cifar10_sample", subset={"train": 1000, "test": 100}, batch_size=64, **kwargs)
    dm = ImageDataModule(cfg, seed=seed, progress=False)
    dm.setup()
    return dm


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:  # noqa: ANN001
    return list(loader)


def test_stratified_sample_is_seeded_and_keeps_proportions() -> None:
    labels = np.repeat([0, 1, 2], [700, 200, 100])
    a = stratified_sample(labels, 100, np.random.default_rng(1))
    b = stratified_sample(labels, 100, np.random.default_rng(1))
    c = stratified_sample(labels, 100, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.bincount(labels[a]).tolist() == [70, 20, 10] and len(set(a.tolist())) == 100


def test_val_carve_is_stratified_seeded_and_disjoint() -> None:
    dm, same, other = _dm(0), _dm(0), _dm(1)
    assert dm.split_sizes == {"train": 900, "test": 100, "val": 100}
    assert dm.class_counts["val"] == [10] * 10 and dm.class_counts["train"] == [90] * 10
    assert torch.equal(dm.images["val"], same.images["val"])
    assert not torch.equal(dm.images["val"], other.images["val"])
    train = {bytes(x.numpy()) for x in dm.images["train"]}
    assert not any(bytes(x.numpy()) in train for x in dm.images["val"])
    assert dm.input_shape == (3, 32, 32) and dm.num_classes == 10 and len(dm.mean) == 3


def test_batches_are_deterministic_per_seed_and_differ_across_epochs() -> None:
    dm, again = _dm(0), _dm(0)
    loader = dm.train_dataloader()
    first = _batches(loader)
    images, labels = first[0]
    assert images.dtype == torch.uint8 and images.shape == (64, 3, 32, 32) and labels.dtype == torch.int64
    # 900 / 64 = 14 full batches + 4 left: a tiny last batch is dropped for train only
    assert len(loader) == len(first) == 14 and len(dm.val_dataloader()) == 1
    assert all(
        torch.equal(a[1], b[1]) for a, b in zip(first, _batches(again.train_dataloader()), strict=True)
    )
    loader.sampler.set_epoch(1)
    second = _batches(loader)
    assert not torch.equal(first[0][1], second[0][1])
    assert sorted(torch.cat([b[1] for b in second]).tolist()) != [] and len(second) == 14
    test = _batches(dm.test_dataloader())
    assert torch.equal(torch.cat([b[1] for b in test]), dm.labels["test"])  # eval order is fixed


def test_sampler_under_ddp_wrapper_shards_batches_and_follows_epochs() -> None:
    dm = _dm(0)
    loader = dm.train_dataloader()
    shards = [
        DistributedSamplerWrapper(loader.sampler, num_replicas=2, rank=r, shuffle=False) for r in (0, 1)
    ]
    seen = [torch.cat(list(s)) for s in shards]
    assert len(set(seen[0].tolist()) & set(seen[1].tolist())) == 0 and len(seen[0]) == len(seen[1]) == 7 * 64
    before = seen[0]
    shards[0].set_epoch(3)  # forwarded to the batch sampler
    assert loader.sampler.epoch == 3 and not torch.equal(torch.cat(list(shards[0])), before)


def test_subset_of_unknown_split_is_an_error() -> None:
    dm = ImageDataModule(DataConfig(dataset="cifar10_sample", subset={"tain": 10}), seed=0, progress=False)
    with pytest.raises(VislangError, match="split 'tain'"):
        dm.setup()


def test_transform_uses_train_statistics(sample_root: Path) -> None:
    dm = _dm(0, normalize="dataset")
    x, _ = next(iter(dm.val_dataloader()))
    out = dm.transform()(x, train=False)
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    expected = (x.float() - torch.tensor(dm.mean).view(1, 3, 1, 1)) / torch.tensor(dm.std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected)


def test_alternating_flip_shows_every_image_both_ways_every_two_epochs() -> None:
    from vislang.config import AugmentConfig

    dm = _dm(augment=AugmentConfig(flip=True, flip_mode="alternate"))
    loader = dm.train_dataloader()
    seen: list[dict[int, torch.Tensor]] = []
    for epoch in (0, 1, 2):
        loader.sampler.set_epoch(epoch)
        order = torch.cat(list(loader.sampler))
        images = torch.cat([x for x, _ in loader])
        seen.append(dict(zip(order.tolist(), images, strict=True)))
    store = dm.images["train"]
    mirrored = [i for i, x in seen[0].items() if not torch.equal(x, store[i])]
    assert 0.35 < len(mirrored) / len(seen[0]) < 0.65  # a seeded coin per image in epoch 0
    common = seen[0].keys() & seen[1].keys() & seen[2].keys()  # (a tiny last batch is dropped)
    assert len(common) > 850
    for i in common:
        assert torch.equal(seen[1][i], seen[0][i].flip(-1))  # the other side in epoch 1
        assert torch.equal(seen[2][i], seen[0][i])  # and back in epoch 2
    # the batch transform then only translates: it does not flip at random on top
    transform = dm.transform()
    torch.manual_seed(0)
    batch = store[:64]
    assert torch.equal(transform.geometric(batch), batch)
