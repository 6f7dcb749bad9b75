"""A byte-level tokenizer: UTF-8 bytes plus BOS/EOS/PAD ids — no vocabulary file, nothing to download."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

PAD, BOS, EOS = 0, 1, 2
BYTE_OFFSET = 3  # byte b has id b + 3, after the three special ids
VOCAB_SIZE = BYTE_OFFSET + 256


def check_prompts(prompts: list[str]) -> list[str]:
    """Validate a batch of prompts: a non-empty list of strings (the empty string is a valid prompt)."""
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, got a single string; wrap it in a list")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty: need at least one prompt (use [''] for the unconditional one)")
    bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
    if bad:
        raise ValueError(f"every prompt must be a str, got {sorted(set(bad))}")
    return prompts


def warn_truncated(lengths: list[int], max_length: int, what: str) -> None:
    """One warning naming how many prompts were longer than the encoder's context."""
    over = [n for n in lengths if n > max_length]
    if over:
        warnings.warn(
            f"{len(over)} prompt(s) longer than the {what} context of {max_length} tokens "
            f"(longest {max(over)}) were truncated",
            stacklevel=3,
        )


class ByteTokenizer:
    """prompt → [BOS, byte + 3, ..., EOS], right-padded with PAD to the longest prompt in the batch."""

    vocab_size = VOCAB_SIZE

    def __init__(self, max_length: int = 64):
        if max_length < 3:
            raise ValueError(f"max_length must be at least 3 (BOS, one byte, EOS), got {max_length}")
        self.max_length = max_length

    def encode(self, prompt: str) -> list[int]:
        """Token ids of one prompt, cut to max_length (EOS is kept: it marks the end for the encoder)."""
        ids = [b + BYTE_OFFSET for b in prompt.encode("utf-8")]
        return [BOS, *ids[: self.max_length - 2], EOS]

    def decode(self, ids: list[int] | Tensor) -> str:
        """Text of a token list; special ids are skipped, a multi-byte character cut in half is dropped."""
        ids = ids.tolist() if isinstance(ids, Tensor) else ids
        return bytes(i - BYTE_OFFSET for i in ids if i >= BYTE_OFFSET).decode("utf-8", errors="ignore")

    def __call__(self, prompts: list[str], device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """ids [B, L] (long) and mask [B, L] (bool, True for real tokens) with L the longest prompt."""
        prompts = check_prompts(prompts)
        warn_truncated([len(p.encode("utf-8")) + 2 for p in prompts], self.max_length, "byte tokenizer")
        rows = [self.encode(p) for p in prompts]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), PAD, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids.to(device), (ids != PAD).to(device)
