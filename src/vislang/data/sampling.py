"""Class-balanced sampling for imbalanced data (``data.sampler: balanced``).

Like :class:`vislang.data.datamodule.BatchIndexSampler` it yields one index tensor per batch (the
dataset slices whole batches), but the indices are drawn with replacement with probability
inversely proportional to the size of each item's class, so every class is equally likely in every
batch. An epoch has as many draws as the split has items; the draws are seeded by (seed, epoch).
torch's ``WeightedRandomSampler`` does the same per item; this one yields whole batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-item sampling weight ``1 / count(class of item)`` (float64 ``[N]``)."""
    counts = torch.bincount(labels)
    return 1.0 / counts[labels].double()


class BalancedBatchSampler(Sampler[torch.Tensor]):
    """Batches of indices drawn with replacement so that each class is equally likely."""

    def __init__(self, labels: torch.Tensor, batch_size: int, seed: int = 0, drop_last: bool = False) -> None:
        self.weights = balanced_weights(labels.long())
        self.n, self.batch_size, self.seed, self.drop_last = len(labels), batch_size, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 7_777)
        draws = torch.multinomial(self.weights, self.n, replacement=True, generator=generator)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield draws[start:start + self.batch_size]

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)
