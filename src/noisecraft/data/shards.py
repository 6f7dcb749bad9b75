"""WebDataset ``.tar`` shards, streamed: data too big for a folder, read by many processes at once.

A shard holds samples as files sharing a key: ``000042.png`` (or .jpg/.jpeg/.webp) + ``000042.txt``.
Shards are dealt out to readers, a reader being one DataLoader worker of one distributed rank:
reader ``rank · num_workers + worker`` of ``world_size · num_workers`` reads shards
``[reader::readers]`` of the (optionally shuffled) shard list, so every sample is read exactly once
per epoch across all processes. That needs at least as many shards as readers (a reader without a
shard yields nothing, and we warn).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .common import decode_rgb, fit_square, index_seed, to_tensor

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


def expand_shards(root: str | Path | list) -> list[str]:
    """Shard paths from a directory (its .tar files), a brace pattern (``data-{000..009}.tar``) or a list."""
    import webdataset as wds

    if isinstance(root, (list, tuple)):
        shards = [str(s) for s in root]
    elif Path(root).is_dir():
        shards = sorted(str(p) for p in Path(root).glob("*.tar"))
    else:
        shards = list(wds.shardlists.expand_urls(str(root)))
    if not shards:
        raise ValueError(f"no .tar shards found at {root}")
    missing = [s for s in shards if "://" not in s and not Path(s).is_file()]
    if missing:
        raise ValueError(f"{len(missing)} shard(s) do not exist, e.g. {missing[0]}")
    return shards


def _shuffled(samples: Iterator[dict], buffer: int, g: torch.Generator) -> Iterator[dict]:
    """Stream shuffle: keep ``buffer`` samples, emit a random one as each new one arrives."""
    pool: list[dict] = []
    for sample in samples:
        pool.append(sample)
        if len(pool) >= buffer:
            yield pool.pop(int(torch.randint(len(pool), (), generator=g)))
    while pool:
        yield pool.pop(int(torch.randint(len(pool), (), generator=g)))


class ShardsDataset(IterableDataset):
    """Streams (image [3, size, size] in [-1, 1], caption) from tar shards, split across readers.

    rank / world_size default to the launch environment (RANK and WORLD_SIZE, or an initialised
    torch.distributed); pass them to override. With ``shuffle_buffer > 0`` the shard order is shuffled
    per epoch (same order on every reader, so the split stays disjoint) and samples pass through a
    shuffle buffer of that size. Call ``set_epoch`` each epoch, as with DistributedSampler.
    """

    def __init__(
        self,
        root: str | Path | list,
        size: int = 32,
        flip: bool = False,
        shuffle_buffer: int = 0,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        self.shards = expand_shards(root)
        if size < 1 or shuffle_buffer < 0:
            raise ValueError(f"need size ≥ 1 and shuffle_buffer ≥ 0, got {size}, {shuffle_buffer}")
        if (rank is None) != (world_size is None) or (world_size is not None and not 0 <= rank < world_size):
            raise ValueError(
                f"need both rank and world_size with 0 ≤ rank < world_size, got {rank}, {world_size}"
            )
        self.size, self.flip, self.shuffle_buffer, self.seed = size, flip, shuffle_buffer, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _reader(self) -> tuple[int, int]:
        """(this reader's number, number of readers) over all ranks and DataLoader workers."""
        import webdataset as wds

        rank, world_size = self.rank, self.world_size
        if rank is None:
            rank, world_size, _, _ = wds.utils.pytorch_worker_info()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * workers + worker, world_size * workers

    def my_shards(self) -> list[str]:
        """The shards this reader streams this epoch."""
        reader, readers = self._reader()
        if readers > len(self.shards) and reader == 0:
            warnings.warn(
                f"{len(self.shards)} shards for {readers} readers: some readers get no data", stacklevel=2
            )
        order = list(range(len(self.shards)))
        if self.shuffle_buffer > 0:
            g = torch.Generator().manual_seed(index_seed(self.seed, self.epoch))
            order = torch.randperm(len(order), generator=g).tolist()
        return [self.shards[i] for i in order[reader::readers]]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str]]:
        import webdataset as wds

        reader, _ = self._reader()
        g = torch.Generator().manual_seed(index_seed(self.seed, self.epoch, salt=1 + reader))
        samples = wds.tarfile_samples([{"url": s} for s in self.my_shards()])
        if self.shuffle_buffer > 0:
            samples = _shuffled(samples, self.shuffle_buffer, g)
        for sample in samples:
            image, caption = self._decode(sample)
            if self.flip and torch.rand((), generator=g) < 0.5:
                image = image.flip(-1)
            yield image, caption

    def _decode(self, sample: dict) -> tuple[torch.Tensor, str]:
        name = f"{sample.get('__url__')}:{sample.get('__key__')}"
        key = next((k for k in IMAGE_KEYS if k in sample), None)
        if key is None or "txt" not in sample:
            raise ValueError(f"sample {name} needs an image ({'/'.join(IMAGE_KEYS)}) and a .txt caption")
        image = to_tensor(fit_square(decode_rgb(sample[key], name), self.size))  # [3, size, size]
        return image, sample["txt"].decode("utf-8").strip()
