"""A convolutional image ↔ latent map run on overlapping tiles, blended linearly across each overlap.

Only one tile's activations exist at a time, so a large image decodes (or encodes) in the memory of a
small one. The convention is that of diffusers' ``AutoencoderKL`` tiling, so the two agree to
rounding: tiles start every ``size − overlap`` input cells; each tile's first ``overlap · scale`` output
rows are a linear blend with the finished tile above (the new tile's weight rising 0, 1/n, …, (n−1)/n),
then its first columns likewise with the finished tile to its left; every tile but the last of a row
or column keeps only its first ``(size − overlap) · scale`` rows (columns). Unlike diffusers, no tile
starts once one has reached the border (diffusers adds a redundant sliver there).

Group norms see one tile's statistics, so a tiled decode differs slightly from an untiled one; the
blend hides the seams.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor


@dataclass(frozen=True)
class Tiling:
    """Tiles of ``size`` image pixels per side, neighbours overlapping by ``overlap`` pixels."""

    size: int = 512  # Stable Diffusion 1/2's native size: 64 latent cells
    overlap: int = 128  # a quarter tile, as diffusers

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"Tiling: size must be a positive integer, got {self.size!r}")
        overlap = self.overlap
        if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= 2 * overlap <= self.size:
            raise ValueError(f"Tiling: overlap must be an integer in [0, size/2], got {self.overlap!r}")

    def check(self, factor: int) -> None:
        """ValueError unless size and overlap are whole numbers of latent cells of ``factor`` pixels."""
        if self.size % factor or self.overlap % factor:
            raise ValueError(
                f"Tiling: size {self.size} and overlap {self.overlap} must be multiples of {factor} pixels"
            )


def tile_starts(length: int, size: int, stride: int) -> list[int]:
    """Where the tiles of one axis start: 0, stride, 2·stride, … until a tile reaches ``length``."""
    starts = [0]
    while starts[-1] + size < length:
        starts.append(starts[-1] + stride)
    return starts


def blend_tiles(
    fn: Callable[[Tensor], Tensor], x: Tensor, size: int, overlap: int, scale: Fraction
) -> Tensor:
    """``fn`` over overlapping ``size``×``size`` tiles of x [B, C, H, W], blended: fn maps [B, C, h, w] →
    [B, C', h·scale, w·scale], and so does this, holding one tile's activations at a time."""
    stride = size - overlap
    blend, keep = int(overlap * scale), int(stride * scale)  # output pixels
    ys, xs = tile_starts(x.shape[-2], size, stride), tile_starts(x.shape[-1], size, stride)
    above: list[Tensor] = []  # the finished tiles of the previous row
    strips = []  # [B, C', keep or rest, W·scale] per row of tiles
    for i, top in enumerate(ys):
        row: list[Tensor] = []
        for j, left in enumerate(xs):
            tile = fn(x[..., top : top + size, left : left + size])  # [B, C', ≤ size·scale, ≤ size·scale]
            if above:
                _blend(above[j], tile, blend, dim=-2)
            if row:
                _blend(row[-1], tile, blend, dim=-1)
            row.append(tile)
        cropped = [t if j == len(xs) - 1 else t[..., :keep] for j, t in enumerate(row)]
        strip = torch.cat(cropped, dim=-1)
        strips.append(strip if i == len(ys) - 1 else strip[..., :keep, :])
        above = row
    return torch.cat(strips, dim=-2)


def _blend(previous: Tensor, tile: Tensor, width: int, dim: int) -> None:
    """In place: ``tile``'s first ``width`` slices along ``dim`` ← (1 − w)·``previous``'s last + w·tile's,
    w = 0, 1/width, …, (width − 1)/width."""
    if width == 0:
        return
    w = torch.arange(width, dtype=torch.float64).div(width).to(tile.device, tile.dtype)  # [width]
    w = w.view(-1, 1) if dim == -2 else w  # broadcast along the rows or the columns
    head, tail = tile.narrow(dim, 0, width), previous.narrow(dim, previous.shape[dim] - width, width)
    head.copy_(tail * (1 - w) + head * w)
