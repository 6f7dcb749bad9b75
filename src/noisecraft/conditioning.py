"""The one value that carries a prompt into a network: tokens, their mask and a pooled vector, and for
inpainting networks the extra input channels (the mask and the masked image's latents)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ControlHint:
    """A control branch (nets.control.ControlNet) to run on one call, its map [1|B, C, H, W] and its
    scale (a number, or one per sample [B])."""

    branch: nn.Module
    image: Tensor
    scale: float | Tensor = 1.0

    def select(self, index: slice | Tensor | list[int]) -> ControlHint:
        """The hint for the samples ``index`` picks (a map shared by the batch stays shared)."""
        image = self.image if self.image.shape[0] == 1 else self.image[index]
        scale = self.scale[index] if isinstance(self.scale, Tensor) else self.scale
        return replace(self, image=image, scale=scale)

    def repeat(self, n: int) -> ControlHint:
        """The hint for every sample repeated ``n`` times."""
        image = self.image if self.image.shape[0] == 1 else self.image.repeat_interleave(n, 0)
        scale = self.scale.repeat_interleave(n, 0) if isinstance(self.scale, Tensor) else self.scale
        return replace(self, image=image, scale=scale)


@dataclass
class Conditioning:
    """Text conditioning for a batch: per-token states, which tokens are real, one pooled vector."""

    tokens: Tensor  # (B, L, D) per-token hidden states
    mask: Tensor  # (B, L) bool, True where a token is real (not padding)
    pooled: Tensor  # (B, D) one vector per prompt
    image: Tensor | None = None  # (B, k, h, w) extra input channels of an inpainting network, or None
    control: tuple[ControlHint, ...] = ()  # control branches to run on this call, with their maps

    def with_control(self, control: tuple[ControlHint, ...]) -> Conditioning:
        """The same prompts with the control branches ``control``."""
        return replace(self, control=tuple(control))

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: slice | Tensor | list[int]) -> Conditioning:
        """Select prompts along the batch axis."""
        image = None if self.image is None else self.image[index]
        control = tuple(c.select(index) for c in self.control)
        return Conditioning(self.tokens[index], self.mask[index], self.pooled[index], image, control)

    def to(self, *args, **kwargs) -> Conditioning:
        """Move or cast the floating tensors like ``Tensor.to``; the mask stays bool."""
        mask = self.mask.to(device=self.tokens.to(*args, **kwargs).device)
        image = None if self.image is None else self.image.to(*args, **kwargs)
        tokens, pooled = self.tokens.to(*args, **kwargs), self.pooled.to(*args, **kwargs)
        return Conditioning(tokens, mask, pooled, image, self.control)

    def repeat(self, n: int) -> Conditioning:
        """Repeat every prompt ``n`` times along the batch axis (for several images per prompt)."""
        return Conditioning(
            self.tokens.repeat_interleave(n, 0),
            self.mask.repeat_interleave(n, 0),
            self.pooled.repeat_interleave(n, 0),
            None if self.image is None else self.image.repeat_interleave(n, 0),
            tuple(c.repeat(n) for c in self.control),
        )

    def with_image(self, image: Tensor) -> Conditioning:
        """The same prompts with extra input channels ``image`` [B, k, h, w] (one prompt is repeated)."""
        base = self.repeat(len(image)) if len(self) == 1 and len(image) > 1 else self
        return Conditioning(base.tokens, base.mask, base.pooled, image, base.control)

    def padded(self, length: int) -> Conditioning:
        """Token lists right-padded to ``length`` with zero tokens marked as padding (never cut)."""
        pad = length - self.tokens.shape[1]
        if pad < 0:
            raise ValueError(f"cannot pad {self.tokens.shape[1]} tokens to {length}")
        if pad == 0:
            return self
        tokens = torch.nn.functional.pad(self.tokens, (0, 0, 0, pad))
        mask = torch.nn.functional.pad(self.mask, (0, pad), value=False)
        return Conditioning(tokens, mask, self.pooled, self.image, self.control)

    @staticmethod
    def cat(parts: list[Conditioning], length: int | None = None) -> Conditioning:
        """Join conditionings along the batch axis, token lists padded to ``length`` (default: longest)."""
        length = max(p.tokens.shape[1] for p in parts) if length is None else length
        parts = [p.padded(length) for p in parts]
        images = [p.image for p in parts]
        if any(i is None for i in images) and not all(i is None for i in images):
            raise ValueError("cannot join conditionings with and without extra input channels")
        if any(p.control for p in parts):
            raise ValueError("cannot join conditionings that carry controls (attach controls after joining)")
        return Conditioning(
            torch.cat([p.tokens for p in parts]),
            torch.cat([p.mask for p in parts]),
            torch.cat([p.pooled for p in parts]),
            None if images[0] is None else torch.cat(images),
        )
