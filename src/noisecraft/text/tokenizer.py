"""Tokenizers with no vocabulary file and nothing to download: UTF-8 bytes, or words hashed to buckets."""

from __future__ import annotations

import hashlib
import re
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
    unit = "byte"

    def __init__(self, max_length: int = 64):
        if max_length < 3:
            raise ValueError(f"max_length must be at least 3 (BOS, one {self.unit}, EOS), got {max_length}")
        self.max_length = max_length

    def pieces(self, prompt: str) -> list[int]:
        """The prompt's ids before BOS/EOS and truncation."""
        return [b + BYTE_OFFSET for b in prompt.encode("utf-8")]

    def encode(self, prompt: str) -> list[int]:
        """Token ids of one prompt, cut to max_length (EOS is kept: it marks the end for the encoder)."""
        return self._framed(self.pieces(prompt))

    def _framed(self, pieces: list[int]) -> list[int]:
        """BOS + pieces cut to fit + EOS (EOS is kept: it marks the end for the encoder)."""
        return [BOS, *pieces[: self.max_length - 2], EOS]

    def decode(self, ids: list[int] | Tensor) -> str:
        """Text of a token list; special ids are skipped, a multi-byte character cut in half is dropped."""
        ids = ids.tolist() if isinstance(ids, Tensor) else ids
        return bytes(i - BYTE_OFFSET for i in ids if i >= BYTE_OFFSET).decode("utf-8", errors="ignore")

    def __call__(self, prompts: list[str], device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """ids [B, L] (long) and mask [B, L] (bool, True for real tokens) with L the longest prompt."""
        prompts = check_prompts(prompts)
        pieces = [self.pieces(p) for p in prompts]
        warn_truncated([len(p) + 2 for p in pieces], self.max_length, f"{self.unit} tokenizer")
        rows = [self._framed(p) for p in pieces]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), PAD, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids.to(device), (ids != PAD).to(device)


def _hash(word: str) -> int:
    """A stable 64-bit hash of a word (Python's hash() changes with every process)."""
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


class WordTokenizer(ByteTokenizer):
    """prompt → [BOS, word id, ..., EOS]: lower-cased words and punctuation marks, each hashed (BLAKE2b)
    to one of ``buckets`` ids, so the same word always gets the same id with no vocabulary to ship.

    A trainable embedding per word hands the encoder each word's identity directly; a byte encoder must
    first learn to spell. Distinct words may share a bucket (rarely, with buckets ≫ the words in use).
    """

    unit = "word"
    WORD = re.compile(r"[^\W_]+|[^\w\s]")  # runs of letters/digits, or one punctuation mark

    def __init__(self, max_length: int = 64, buckets: int = 4096):
        super().__init__(max_length)
        if buckets < 1:
            raise ValueError(f"buckets must be at least 1, got {buckets}")
        self.buckets = buckets
        self.vocab_size = BYTE_OFFSET + buckets

    def pieces(self, prompt: str) -> list[int]:
        words = self.WORD.findall(prompt.lower())
        return [BYTE_OFFSET + _hash(w) % self.buckets for w in words]

    def decode(self, ids: list[int] | Tensor) -> str:
        raise NotImplementedError("hashed word ids cannot be decoded back to text")
