"""Seeded Gaussian noise for samplers: one generator per sample, so a seed's image ignores its batch.

    noise = SeededNoise([7, 8, 9])              # three samples, seeded 7, 8, 9
    x = noise.randn((3, 32, 32))                # [3, 3, 32, 32]: row i from generator i
    eps = noise.randn_like(x)                   # the next draw of each row's own generator

In the spirit of EDM's ``StackedRandomGenerator`` (Karras et al. 2022, ``generate.py``). Rows are
drawn on the CPU and then moved, so a seed gives the same noise on every device.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor


class Noise(Protocol):
    """Anything a sampler draws its fresh noise from."""

    def randn_like(self, x: Tensor) -> Tensor: ...


def check_seed(seed: int, count: int = 1) -> None:
    """ValueError unless seeds ``seed`` … ``seed + count - 1`` can all seed a torch generator (64 bits)."""
    if isinstance(seed, bool) or int(seed) != seed or not -(2**63) <= seed <= 2**64 - count:
        raise ValueError(
            f"seed must be an integer from -2**63 to 2**64 - {count} (image i uses seed + i), got {seed}"
        )


RANDOM_SEED = -1  # AUTOMATIC1111's convention: a fresh random seed, reported back with the images


def pick_seed(seed: int) -> int:
    """-1 → a fresh seed in [0, 2³²) from the OS's entropy (not torch's global state); others as given."""
    return secrets.randbelow(2**32) if seed == RANDOM_SEED else seed


class SeededNoise:
    """One CPU generator per sample: row i of every draw comes from generator i alone."""

    def __init__(self, seeds: Sequence[int]):
        for seed in seeds:
            check_seed(seed)
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(
        self, shape: Sequence[int], dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> Tensor:
        """[len(self), *shape] standard normal noise."""
        rows = [torch.randn(tuple(shape), generator=g, dtype=dtype) for g in self.generators]
        return torch.stack(rows).to(device)

    def randn_like(self, x: Tensor) -> Tensor:
        """Noise shaped like x [B, ...], B = len(self)."""
        if x.shape[0] != len(self):
            raise ValueError(f"got {len(self)} seeded generators for a batch of {x.shape[0]}")
        return self.randn(x.shape[1:], x.dtype, x.device)


class GeneratorNoise:
    """Every draw from one torch generator (None: torch's global one)."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def randn_like(self, x: Tensor) -> Tensor:
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)


def as_noise(source: Noise | torch.Generator | None) -> Noise:
    """A ``Noise`` for what a sampler was given: a Noise as it is, a torch generator or None wrapped."""
    if source is None or isinstance(source, torch.Generator):
        return GeneratorNoise(source)
    if not callable(getattr(source, "randn_like", None)):
        raise TypeError(f"expected a torch.Generator or a Noise (SeededNoise), got {type(source).__name__}")
    return source
