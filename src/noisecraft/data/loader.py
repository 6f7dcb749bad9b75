"""Worker processes that prepare items ahead of the training process, passing only numpy arrays.

A torch ``DataLoader`` with ``batch_size=None`` hands each key of ``order`` to a worker, which
returns ``items[key]`` as it is: no default collation, so numpy arrays cross the process boundary
pickled as bytes. Torch tensors would travel as shared-memory file descriptors, which a fork pool
on some GPU machines cannot pass (``received 0 items of ancdata``); the training process turns the
arrays into tensors itself.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


def _as_is(item: Any) -> Any:
    """The collate function: the worker's result unchanged (numpy arrays stay numpy arrays)."""
    return item


def _quiet_worker(worker_id: int) -> None:
    """Workers ignore Ctrl-C and SIGTERM: the training process finishes its step, saves, then stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def worker_items(items: Dataset, order: Iterable[int], workers: int, prefetch: int = 2) -> Iterator[Any]:
    """``items[k]`` for each k of ``order``, in order, made by ``workers`` processes (0: in this one),
    each keeping ``prefetch`` items ready. Items must not contain torch tensors (send numpy arrays)."""
    if workers == 0:
        return (items[k] for k in order)
    loader = DataLoader(
        items,
        batch_size=None,
        sampler=order,
        num_workers=workers,
        prefetch_factor=prefetch,
        collate_fn=_as_is,
        worker_init_fn=_quiet_worker,
        generator=torch.Generator().manual_seed(0),  # the workers' base seed, not the global RNG
    )
    return iter(loader)
