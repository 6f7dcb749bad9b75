"""Feeding data to the trainer, from a position a checkpoint can store, so a resumed run sees the same data.

Both sources answer ``take(k)``: this process's share of global micro-batch k, as
([B, ...] examples, B captions).

- Random-access datasets (``IndexedBatches``): batch k is a pure function of (seed, k). Epoch
  e = k // batches_per_epoch uses its own seeded permutation and batch k takes the next slice of
  it; every process computes the same global batch and keeps its own share. The checkpoint's
  batch count k is the whole data position.
- Streaming datasets (``StreamBatches``, e.g. ``shards``): read in order, in this process. The
  dataset splits itself across ranks (``ShardsDataset`` deals each rank its shards after a seeded
  per-epoch shard shuffle, ``data.options.shuffle_buffer`` > 0), and batches run on across epoch
  ends. The position is (epoch, examples consumed in it) for every rank; a resume restarts that
  epoch and skips the consumed examples. That is exact, but skipping costs the time of reading
  and decoding them: up to one epoch of this rank's share.

Datasets whose augmentation or caption choice depends on the epoch (``set_epoch``) are told it
before they are read, so the epoch, like the rest of the position, is restored on resume.

With ``data.workers`` > 0 a random-access dataset's batches are made ahead by worker processes
(``noisecraft.data.loader``): each makes whole batches k, k+1, … from its own copy of the dataset,
by the same pure function of (seed, k), so the batches are the same for any number of workers and a
resume restarts the workers at the checkpoint's k. With ``data.cache`` the examples of shapes,
emoji and mnist are read from a memory-mapped file rendered once (``noisecraft.data.cache``), bit
for bit what the dataset gives.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import IterableDataset

from ..data.cache import cache_key, cached, shared_cache_dir
from ..data.loader import worker_items
from .distributed import all_reduce, barrier

if TYPE_CHECKING:
    from .config import DataConfig

Example = tuple[Tensor, str]
_END = object()  # the end of one epoch's stream


class Dataset(Protocol):
    """Random-access (example, caption) pairs; examples are tensors (images in [-1, 1], points, …)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Example: ...


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


def _set_epoch(dataset: object, epoch: int) -> None:
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


def stack(items: Sequence[Example]) -> tuple[Tensor, list[str]]:
    """(example, caption) pairs as ([B, ...] tensor, B captions)."""
    return torch.stack([x for x, _ in items]), [caption for _, caption in items]


def collate(dataset: Dataset, indices: Sequence[int] | Tensor, epoch: int) -> tuple[Tensor, list[str]]:
    """Stack the examples at ``indices`` of epoch ``epoch``: a pure function of (seed, index, epoch)."""
    _set_epoch(dataset, epoch)
    if hasattr(dataset, "get_batch"):  # a cached dataset reads a whole batch in one go
        images, captions = dataset.get_batch(np.asarray(indices))
        return torch.from_numpy(images), captions
    return stack([dataset[int(i)] for i in indices])


class BatchTable(TorchDataset):
    """Item k: this process's share of global batch k as (numpy [B / world_size, ...], captions), the
    form in which a worker process hands it over (arrays, never tensors: see noisecraft.data.loader)."""

    def __init__(self, dataset: Dataset, sampler: EpochSampler, rank: int, world_size: int):
        self.dataset, self.sampler, self.rank, self.world_size = dataset, sampler, rank, world_size

    def __getitem__(self, k: int) -> tuple[np.ndarray, list[str]]:
        indices = shard(self.sampler.batch(k), self.rank, self.world_size)
        x, captions = collate(self.dataset, indices, self.sampler.epoch_of(k))
        return x.numpy(), captions


class IndexedBatches:
    """Batches of a random-access dataset: global batch k is a pure function of (seed, k), made in this
    process or ahead of time by ``workers`` processes; ``pin`` puts them in page-locked memory (CUDA)."""

    def __init__(
        self, dataset: Dataset, batch_size: int, seed: int, rank: int, world_size: int,
        workers: int = 0, prefetch: int = 2, pin: bool = False,
    ):  # fmt: skip
        self.dataset, self.batch_size = dataset, batch_size
        self.sampler = EpochSampler(len(dataset), batch_size, seed)
        self.rank, self.world_size = rank, world_size
        self.table = BatchTable(dataset, self.sampler, rank, world_size)
        self.workers, self.prefetch, self.pin = workers, prefetch, pin
        self._stream: Iterator[tuple[np.ndarray, list[str]]] | None = None
        self._next = 0  # the batch the workers' stream gives next

    def take(self, k: int) -> tuple[Tensor, list[str]]:
        """This process's share of global batch k: ([B / world_size, ...], captions)."""
        if self.workers == 0:
            x, captions = self.table[k]
        else:
            if self._stream is None or k != self._next:  # first call, or a jump: restart the workers at k
                self.close()
                self._stream = worker_items(self.table, itertools.count(k), self.workers, self.prefetch)
            x, captions = next(self._stream)
            self._next = k + 1
        x = torch.from_numpy(x)
        return (x.pin_memory() if self.pin else x), captions

    def close(self) -> None:
        """Stop the worker processes; the next ``take`` starts them again at its batch."""
        self._stream = None  # dropping the DataLoader iterator shuts its workers down

    def epochs(self, k: int) -> float:
        """Epochs completed after k batches."""
        return k / self.sampler.batches_per_epoch

    def example(self) -> Tensor:
        """One example, for the shape of sample previews."""
        return self.dataset[0][0]

    def positions(self, device: torch.device) -> None:
        """Nothing to store: the batch count k in the trainer's state is the whole position."""
        return None

    def restore(self, positions: Any) -> None:
        """Nothing to restore (see ``positions``)."""


class StreamBatches:
    """Batches of a streamed dataset read in order; this rank's position is (epoch, examples consumed)."""

    def __init__(self, dataset: IterableDataset, batch_size: int, rank: int, world_size: int):
        _assign_rank(dataset, rank, world_size)
        self.dataset, self.batch_size = dataset, batch_size
        self.rank, self.world_size, self.per_rank = rank, world_size, batch_size // world_size
        self.epoch, self.consumed = 0, 0
        self._stream: Iterator[Example] | None = None

    def _open(self) -> Iterator[Example]:
        _set_epoch(self.dataset, self.epoch)  # before iter(): the epoch picks the shard order
        return iter(self.dataset)

    def _next(self) -> Example:
        if self._stream is None:
            self._stream = self._open()
        while (item := next(self._stream, _END)) is _END:
            if self.consumed == 0:
                raise ValueError(
                    f"the data stream gave process {self.rank} nothing in epoch {self.epoch}: every one "
                    f"of the {self.world_size} processes needs at least one non-empty shard"
                )
            self.epoch, self.consumed = self.epoch + 1, 0
            self._stream = self._open()
        self.consumed += 1
        return item

    def take(self, k: int) -> tuple[Tensor, list[str]]:
        """This process's next batch_size / world_size examples (k only counts, the stream is in order)."""
        return stack([self._next() for _ in range(self.per_rank)])

    def close(self) -> None:
        """Nothing to stop: a stream is read in this process."""

    def epochs(self, k: int) -> float:
        """Epochs this rank completed (a stream's length is unknown until its end)."""
        return float(self.epoch)

    def example(self) -> Tensor:
        """One example, for the shape of sample previews (from a separate iterator)."""
        return next(iter(self.dataset))[0]

    def positions(self, device: torch.device) -> list[dict[str, int]]:
        """Every rank's (epoch, consumed), for rank 0's checkpoint: all processes must call it."""
        table = torch.zeros(self.world_size, 2, dtype=torch.long, device=device)  # [world, 2]
        table[self.rank] = torch.tensor([self.epoch, self.consumed])
        table = all_reduce(table, op="max")  # the other rows are 0: max gathers them
        return [{"epoch": e, "consumed": n} for e, n in table.tolist()]

    def restore(self, positions: list[dict[str, int]] | None) -> None:
        """Continue from a checkpoint's positions: restart this rank's epoch and skip what it consumed."""
        if positions is None:
            raise ValueError(
                "--resume: the checkpoint holds no stream position (it read a random-access dataset)"
            )
        if len(positions) != self.world_size:
            raise ValueError(
                f"--resume: the checkpoint was written by {len(positions)} processes reading the stream, "
                f"this run has {self.world_size}; a streamed dataset resumes only with the same number"
            )
        self.epoch, self.consumed = positions[self.rank]["epoch"], 0
        self._stream = self._open()
        for _ in range(positions[self.rank]["consumed"]):  # reads and decodes each skipped example
            if next(self._stream, _END) is _END:
                raise ValueError(
                    f"--resume: epoch {self.epoch} of the data stream ended after {self.consumed} examples, "
                    f"before the checkpoint's position ({positions[self.rank]['consumed']}): the data changed"
                )
            self.consumed += 1


def _assign_rank(dataset: object, rank: int, world_size: int) -> None:
    """Tell a dataset that splits itself across processes (``rank``, ``world_size``) which one this is."""
    if not hasattr(dataset, "world_size"):
        return
    if dataset.world_size is None:
        dataset.rank, dataset.world_size = rank, world_size
    elif (dataset.rank, dataset.world_size) != (rank, world_size):
        raise ValueError(
            f"data.options: rank {dataset.rank} of world_size {dataset.world_size} given, but this is "
            f"process {rank} of {world_size}; leave them out, the launcher sets them"
        )


def make_batches(
    dataset: Dataset | IterableDataset, batch_size: int, seed: int, rank: int, world_size: int,
    workers: int = 0, prefetch: int = 2, pin: bool = False,
) -> IndexedBatches | StreamBatches:  # fmt: skip
    """The batch source for a dataset: streamed when it has no random access."""
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
        if workers:
            raise ValueError(
                "data.workers: a streamed dataset (shards) is read in order in the training process; "
                "set data.workers=0"
            )
        return StreamBatches(dataset, batch_size, rank, world_size)
    return IndexedBatches(dataset, batch_size, seed, rank, world_size, workers, prefetch, pin)


def make_training_dataset(name: str, options: dict[str, Any]) -> Dataset | IterableDataset:
    """The dataset ``data.name`` names, built by ``noisecraft.data.make_dataset``, with errors naming keys."""
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
        return make_dataset(name, **options)
    except (ValueError, OSError) as err:  # a missing folder, no shards, a bad option value
        raise ValueError(f"data.options ({name}): {err}") from None


def open_training_dataset(data: DataConfig, out: Path, is_main: bool) -> Dataset | IterableDataset:
    """The dataset ``data`` names, read from its cache file when ``data.cache`` asks for one (rendered
    by the main process if missing, while the others wait)."""
    dataset = make_training_dataset(data.name, data.options)
    if data.cache == "off":
        return dataset
    cache_key(data.name, dataset)  # a dataset that cannot be cached fails in every process alike
    folder = Path(out) / "data-cache" if data.cache == "run" else shared_cache_dir()
    found = cached(dataset, data.name, folder, workers=data.workers) if is_main else None
    barrier()
    return found if found is not None else cached(dataset, data.name, folder, log=lambda line: None)
