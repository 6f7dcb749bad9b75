"""Feeding data to the trainer: index-addressable batches, so a resumed run replays the same ones.

Batch k of a run is a pure function of (seed, k): epoch e = k // batches_per_epoch uses its own
seeded permutation of the dataset and batch k takes the next slice of it. The checkpoint stores
only k. Every process computes the same global batch and keeps its own shard of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor


class Dataset(Protocol):
    """Random-access (example, caption) pairs; examples are tensors (images in [-1, 1], points, …)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, str]: ...


class EpochSampler:
    """Global batches of dataset indices: a fresh seeded permutation per epoch, the remainder dropped."""

    def __init__(self, size: int, batch_size: int, seed: int):
        if size < batch_size:
            raise ValueError(f"the dataset has {size} examples, fewer than one micro-batch ({batch_size})")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.batches_per_epoch = size // batch_size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def permutation(self, epoch: int) -> Tensor:
        """The order of epoch ``epoch``: depends only on (seed, epoch)."""
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
            self._epoch, self._perm = epoch, torch.randperm(self.size, generator=generator)
        return self._perm

    def epoch_of(self, k: int) -> int:
        return k // self.batches_per_epoch

    def batch(self, k: int) -> Tensor:
        """Dataset indices of global batch k (0-based), [batch_size]."""
        epoch, i = divmod(k, self.batches_per_epoch)
        return self.permutation(epoch)[i * self.batch_size : (i + 1) * self.batch_size]


def shard(indices: Tensor, rank: int, world_size: int) -> Tensor:
    """This process's contiguous share of a global batch."""
    per_rank = len(indices) // world_size
    return indices[rank * per_rank : (rank + 1) * per_rank]


def collate(dataset: Dataset, indices: Sequence[int] | Tensor, epoch: int) -> tuple[Tensor, list[str]]:
    """Stack the examples at ``indices`` of epoch ``epoch``: ([B, ...] tensor, B captions).

    Datasets whose augmentation or caption choice depends on the epoch (``set_epoch``) are told it
    first: a pure function of (seed, index, epoch), so a resumed run sees the same examples.
    """
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    items = [dataset[int(i)] for i in indices]
    return torch.stack([x for x, _ in items]), [caption for _, caption in items]


def make_training_dataset(name: str, options: dict[str, Any]) -> Dataset:
    """The dataset ``data.name`` names, built by ``noisecraft.data.make_dataset``, with errors naming keys."""
    from torch.utils.data import IterableDataset

    from ..data import DATASETS, dataset_options, make_dataset

    if name not in DATASETS:
        raise ValueError(f"data.name: {name!r} is not accepted; accepted values: {list(DATASETS)}")
    accepted = dataset_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown key 'data.options.{unknown[0]}' for {name!r}; accepted keys: {list(accepted)}"
        )
    try:
        dataset = make_dataset(name, **options)
    except (ValueError, OSError) as err:  # a missing folder, a bad option value
        raise ValueError(f"data.options ({name}): {err}") from None
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
        raise ValueError(
            f"data.name: {name!r} streams its examples, but exact resume needs random access; "
            "use a finite dataset (shapes, emoji, mnist, folder, toy2d)"
        )
    return dataset
