"""Reusing a U-Net's deep features across sampling steps: DeepCache (Ma, Fang & Wang 2023).

A sampler's adjacent steps change a U-Net's deep, low-resolution features little. With a cache of
``interval`` N, every N-th call of the denoiser by the sampler runs the whole U-Net and keeps, for each
chunk of rows, the features that enter its last ``branch`` decoder blocks; the N − 1 calls in between
run only the shallow path on them: conv_in, the first ``branch − 1`` encoder blocks (the skips those
decoder blocks take), those decoder blocks and conv_out. Interval 1 is the plain U-Net, bit for bit.

    with reuse_features(denoiser, interval=3):   # the U-Net behind denoiser.net
        sampler(StepCounter(guided_denoiser, cache), x, sigmas, cond)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..conditioning import Conditioning

MAX_INTERVAL = 10  # more reuse than this drifts too far from the sampled path to be worth offering


@dataclass
class FeatureCache:
    """The kept deep features, one per chunk of rows the U-Net ran on in the last full call."""

    interval: int
    branch: int = 1  # decoder blocks (from the output end) that run on every call
    calls: int = -1  # the sampler's calls of the denoiser so far, minus one
    slot: int = 0  # the U-Net's runs within the current sampler call (FixedBatch chunks)
    kept: dict[int, tuple[Tensor, Tensor | None]] = field(default_factory=dict)
    full_runs: int = 0
    shallow_runs: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.interval <= MAX_INTERVAL:
            raise ValueError(f"deep_cache interval must be in [1, {MAX_INTERVAL}], got {self.interval}")
        if self.branch < 1:
            raise ValueError(f"deep_cache branch must be at least 1, got {self.branch}")

    def next_call(self) -> None:
        """The sampler calls the denoiser again: a full call every ``interval``-th time."""
        self.calls, self.slot = self.calls + 1, 0

    def take(self, like: Tensor, rows: Tensor | None) -> tuple[int, Tensor | None]:
        """(this U-Net run's slot, the kept features to reuse, or None to run in full). ``like`` is the
        input [B, C, H, W] and ``rows`` [B, …] what tells its rows' conditioning apart (a slice of the
        prompt tokens): features kept for other rows (a chunk whose rows changed when guidance
        switched on or off, another batch size) are not reused."""
        slot, self.slot = self.slot, self.slot + 1
        kept = self.kept.get(slot) if self.calls % self.interval else None
        deep = None
        if kept is not None and kept[0].shape[0] == like.shape[0] and _same(kept[1], rows):
            deep = kept[0]
        self.full_runs += deep is None
        self.shallow_runs += deep is not None
        return slot, deep

    def keep(self, slot: int, deep: Tensor, rows: Tensor | None) -> None:
        self.kept[slot] = (deep, rows)


def _same(a: Tensor | None, b: Tensor | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


class StepCounter:
    """A denoiser that tells ``cache`` of every call before making it (outermost, as the sampler sees)."""

    def __init__(self, denoiser, cache: FeatureCache):
        self.denoiser, self.cache = denoiser, cache

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Conditioning | None = None) -> Tensor:
        self.cache.next_call()
        return self.denoiser(x, sigma, cond)


@contextmanager
def reuse_features(denoiser, interval: int, branch: int = 1) -> Iterator[FeatureCache | None]:
    """The U-Net behind ``denoiser`` (its ``net``) with a FeatureCache for the block's duration;
    None (and nothing changed) for interval 1; a ValueError when there is no U-Net to cache."""
    if interval == 1:
        yield None
        return
    from .unet import UNet

    net = getattr(denoiser, "net", None)
    if not isinstance(net, UNet):
        raise ValueError(f"deep_cache needs a U-Net model; this one is {type(net).__name__}")
    cache = FeatureCache(interval, min(branch, net.up_blocks()))
    net.feature_cache = cache
    try:
        yield cache
    finally:
        net.feature_cache = None
