"""The one value that carries a prompt into a network: tokens, their mask and a pooled vector."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Conditioning:
    """Text conditioning for a batch: per-token states, which tokens are real, one pooled vector."""

    tokens: Tensor  # (B, L, D) per-token hidden states
    mask: Tensor  # (B, L) bool, True where a token is real (not padding)
    pooled: Tensor  # (B, D) one vector per prompt

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: slice | Tensor | list[int]) -> Conditioning:
        """Select prompts along the batch axis."""
        return Conditioning(self.tokens[index], self.mask[index], self.pooled[index])

    def to(self, *args, **kwargs) -> Conditioning:
        """Move or cast the floating tensors like ``Tensor.to``; the mask stays bool."""
        mask = self.mask.to(device=self.tokens.to(*args, **kwargs).device)
        return Conditioning(self.tokens.to(*args, **kwargs), mask, self.pooled.to(*args, **kwargs))

    def repeat(self, n: int) -> Conditioning:
        """Repeat every prompt ``n`` times along the batch axis (for several images per prompt)."""
        return Conditioning(
            self.tokens.repeat_interleave(n, 0),
            self.mask.repeat_interleave(n, 0),
            self.pooled.repeat_interleave(n, 0),
        )

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        """Join conditionings along the batch axis, padding token lists to the longest."""
        length = max(p.tokens.shape[1] for p in parts)
        tokens, masks = [], []
        for p in parts:
            pad = length - p.tokens.shape[1]
            tokens.append(torch.nn.functional.pad(p.tokens, (0, 0, 0, pad)))
            masks.append(torch.nn.functional.pad(p.mask, (0, pad), value=False))
        return Conditioning(torch.cat(tokens), torch.cat(masks), torch.cat([p.pooled for p in parts]))
