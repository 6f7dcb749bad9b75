"""Precomputed text embeddings: a frozen encoder runs once over a fixed caption set, then it's a lookup.

Training on a finite caption set (shapes, emoji, MNIST digits) would otherwise re-run the frozen
encoder for every batch. Each caption is stored trimmed to its own tokens; a request is padded to
its longest caption, as the encoder pads a batch, so a lookup equals direct encoding.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from ..conditioning import Conditioning
from .tokenizer import check_prompts


class CachedTextEncoder:
    """A TextEncoder answering from stored embeddings of ``captions`` (plus the empty prompt).

    With ``fallback=True`` an unseen caption is encoded by the wrapped encoder and then stored;
    otherwise it raises ValueError.
    """

    def __init__(self, encoder, captions: list[str], batch_size: int = 64, fallback: bool = False):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if isinstance(encoder, nn.Module) and any(p.requires_grad for p in encoder.parameters()):
            warnings.warn(
                "caching a trainable text encoder: the stored embeddings will not follow its training",
                stacklevel=2,
            )
        self.encoder, self.batch_size, self.fallback = encoder, batch_size, fallback
        self.dim, self.max_length = encoder.dim, encoder.max_length
        self.entries: dict[
            str, tuple[Tensor, Tensor, Tensor]
        ] = {}  # caption → tokens [L, D], mask [L], pooled [D]
        # the empty prompt is always kept: condition dropout and unguided sampling need it
        self._store(list(dict.fromkeys(["", *check_prompts(captions)])))

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, caption: str) -> bool:
        return caption in self.entries

    @torch.no_grad()
    def _store(self, captions: list[str]) -> None:
        """Encode captions in batches and keep each one trimmed to its last real token."""
        for start in range(0, len(captions), self.batch_size):
            chunk = captions[start : start + self.batch_size]
            cond = self.encoder(chunk)
            for i, caption in enumerate(chunk):
                length = int(cond.mask[i].nonzero().max()) + 1 if cond.mask[i].any() else 0
                self.entries[caption] = (cond.tokens[i, :length], cond.mask[i, :length], cond.pooled[i])

    def __call__(self, prompts: list[str]) -> Conditioning:
        """Conditioning for prompts, all from the cache; token lists padded to the longest."""
        prompts = check_prompts(prompts)
        unseen = list(dict.fromkeys(p for p in prompts if p not in self.entries))
        if unseen and not self.fallback:
            shown = ", ".join(repr(p) for p in unseen[:3])
            raise ValueError(
                f"{len(unseen)} prompt(s) not in the precomputed caption set, e.g. {shown}; "
                "add them to the set or pass fallback=True"
            )
        if unseen:
            self._store(unseen)
        tokens, masks, pooled = zip(*(self.entries[p] for p in prompts))
        return Conditioning(
            pad_sequence(list(tokens), batch_first=True),  # [B, L, D], zero padding
            pad_sequence(list(masks), batch_first=True, padding_value=False),  # [B, L]
            torch.stack(pooled),  # [B, D]
        )


def precompute(
    encoder, captions: list[str], batch_size: int = 64, fallback: bool = False
) -> CachedTextEncoder:
    """Encode ``captions`` once with a frozen ``encoder``; returns a lookup usable as a TextEncoder."""
    return CachedTextEncoder(encoder, captions, batch_size=batch_size, fallback=fallback)
