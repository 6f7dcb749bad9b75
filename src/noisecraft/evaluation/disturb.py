"""Disturbed copies of an image set, and the FID each earns in a feature space.

A feature space fit for FID must rank degradations in order: the more noise, blur, occlusion or
impulse noise is added to real images, the larger their FID against the originals (Heusel et al.
2017, "GANs Trained by a Two Time-Scale Update Rule ...", §"FID is consistent with increasing
disturbances"). ``disturbance_fids`` measures that curve; ``rises_monotonically`` reads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .metrics import fid_from_features

# Levels per disturbance, mild to strong (images in [-1, 1]):
# noise: std of added Gaussian noise; blur: σ of a Gaussian blur in pixels; rectangles: side of one
# black square as a fraction of the image side; salt_pepper: fraction of pixels set to ±1.
DEFAULT_LEVELS: dict[str, tuple[float, ...]] = {
    "noise": (0.05, 0.1, 0.2, 0.4),
    "blur": (0.5, 1.0, 1.5, 2.5),
    "rectangles": (0.15, 0.3, 0.45, 0.6),
    "salt_pepper": (0.02, 0.05, 0.1, 0.2),
}


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [B, C, H, W] with std ``sigma`` pixels, reflected at the border."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()  # [2r + 1]
    c = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along width
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along height


def _black_square(images: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    """One black square of side ``fraction`` of the image side per image, at a random place."""
    b, _, h, w = images.shape
    side = max(1, round(fraction * min(h, w)))
    top = torch.randint(0, h - side + 1, (b,), generator=generator)
    left = torch.randint(0, w - side + 1, (b,), generator=generator)
    rows = torch.arange(h)[None, :, None]  # [1, H, 1]
    cols = torch.arange(w)[None, None, :]  # [1, 1, W]
    inside = (rows >= top[:, None, None]) & (rows < (top + side)[:, None, None])
    inside = inside & (cols >= left[:, None, None]) & (cols < (left + side)[:, None, None])  # [B, H, W]
    return images.masked_fill(inside[:, None], -1.0)


def _salt_pepper(images: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    """Set a random ``fraction`` of pixels (all channels) to white or black."""
    b, _, h, w = images.shape
    hit = torch.rand(b, 1, h, w, generator=generator) < fraction
    value = torch.randint(0, 2, (b, 1, h, w), generator=generator).to(images.dtype) * 2 - 1
    return torch.where(hit, value, images)


def disturb(images: Tensor, kind: str, level: float, generator: torch.Generator) -> Tensor:
    """A disturbed copy of images [B, C, H, W] in [-1, 1] (``kind`` from DEFAULT_LEVELS), still in [-1, 1]."""
    if kind not in DEFAULT_LEVELS:
        raise ValueError(f"unknown disturbance {kind!r}; valid: {', '.join(DEFAULT_LEVELS)}")
    if level < 0:
        raise ValueError(f"a disturbance level must be ≥ 0, got {level}")
    if level == 0:
        return images.clone()
    if kind == "noise":
        out = images + level * torch.randn(images.shape, generator=generator, dtype=images.dtype)
    elif kind == "blur":
        out = gaussian_blur(images, level)
    elif kind == "rectangles":
        out = _black_square(images, level, generator)
    else:
        out = _salt_pepper(images, level, generator)
    return out.clamp(-1, 1)


def disturbed_sets(
    images: Tensor, levels: Mapping[str, Sequence[float]] | None = None, seed: int = 0
) -> dict[str, dict[float, Tensor]]:
    """Every disturbed copy of ``images``: {kind: {level: images}}, each kind drawn from ``seed``."""
    sets = {}
    for kind, kind_levels in (levels or DEFAULT_LEVELS).items():
        generator = torch.Generator().manual_seed(seed)
        sets[kind] = {level: disturb(images, kind, level, generator) for level in kind_levels}
    return sets


def disturbance_fids(
    features: Callable[[Tensor], Tensor],
    images: Tensor,
    levels: Mapping[str, Sequence[float]] | None = None,
    seed: int = 0,
) -> dict[str, list[float]]:
    """FID of each disturbed copy of ``images`` against the images themselves, per kind and level."""
    reference = features(images)  # [N, D]
    return {
        kind: [fid_from_features(reference, features(copy)) for copy in copies.values()]
        for kind, copies in disturbed_sets(images, levels, seed).items()
    }


def rises_monotonically(curves: Mapping[str, Sequence[float]]) -> bool:
    """Whether every curve strictly increases with the disturbance level."""
    return all(a < b for curve in curves.values() for a, b in zip(curve, curve[1:]))
