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

    def padded(self, length: int) -> Conditioning:
        """Token lists right-padded to ``length`` with zero tokens marked as padding (never cut)."""
        pad = length - self.tokens.shape[1]
        if pad < 0:
            raise ValueError(f"cannot pad {self.tokens.shape[1]} tokens to {length}")
        if pad == 0:
            return self
        tokens = torch.nn.functional.pad(self.tokens, (0, 0, 0, pad))
        return Conditioning(tokens, torch.nn.functional.pad(self.mask, (0, pad), value=False), self.pooled)

    @staticmethod
    def cat(parts: list[Conditioning], length: int | None = None) -> Conditioning:
        """Join conditionings along the batch axis, token lists padded to ``length`` (default: longest)."""
        length = max(p.tokens.shape[1] for p in parts) if length is None else length
        parts = [p.padded(length) for p in parts]
        return Conditioning(
            torch.cat([p.tokens for p in parts]),
            torch.cat([p.mask for p in parts]),
            torch.cat([p.pooled for p in parts]),
        )
