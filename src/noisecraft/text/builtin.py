"""Built-in text encoder: a small transformer over byte or word tokens, trained with the diffusion model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..components import register_component
from ..conditioning import Conditioning
from .tokenizer import ByteTokenizer, WordTokenizer


@dataclass
class BuiltinTextEncoderConfig:
    dim: int = 128
    depth: int = 2
    heads: int = 4
    max_length: int = 64  # tokens + BOS + EOS
    mlp_ratio: int = 4
    dropout: float = 0.0
    tokens: Literal["bytes", "words"] = "bytes"  # UTF-8 bytes, or words hashed to `buckets` ids
    buckets: int = 4096  # word ids (tokens = "words" only)

    def __post_init__(self) -> None:
        if self.tokens not in ("bytes", "words") or self.buckets < 1:
            raise ValueError(f"tokens must be 'bytes' or 'words' and buckets ≥ 1, got {self}")
        if self.dim <= 0 or self.depth < 0 or self.heads <= 0 or self.mlp_ratio <= 0:
            raise ValueError(f"dim, heads, mlp_ratio must be positive and depth >= 0, got {self}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class Block(nn.Module):
    """Pre-norm transformer layer: x + attn(LN x), then x + mlp(LN x); padding keys are masked out."""

    def __init__(self, config: BuiltinTextEncoderConfig):
        super().__init__()
        self.heads, self.dropout = config.heads, config.dropout
        self.norm1, self.norm2 = nn.LayerNorm(config.dim), nn.LayerNorm(config.dim)
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        hidden = config.mlp_ratio * config.dim
        self.mlp = nn.Sequential(nn.Linear(config.dim, hidden), nn.GELU(), nn.Linear(hidden, config.dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, n, d = x.shape  # [B, L, D]
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, D/H]
        attend = mask[:, None, None, :]  # [B, 1, 1, L]: every query sees only real keys
        drop = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, dropout_p=drop)
        x = x + self.proj(out.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


@register_component("builtin_text")
class BuiltinTextEncoder(nn.Module):
    """Token embedding + learned positions + pre-norm transformer layers; pooled = mean over real tokens."""

    config_class = BuiltinTextEncoderConfig

    def __init__(self, config: BuiltinTextEncoderConfig | None = None):
        super().__init__()
        self.config = config = config or BuiltinTextEncoderConfig()
        self.tokenizer = (
            WordTokenizer(config.max_length, config.buckets)
            if config.tokens == "words"
            else ByteTokenizer(config.max_length)
        )
        self.embed = nn.Embedding(self.tokenizer.vocab_size, config.dim)
        self.position = nn.Parameter(torch.randn(config.max_length, config.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        nn.init.normal_(self.embed.weight, std=0.02)

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def max_length(self) -> int:
        return self.config.max_length

    def encode_ids(self, ids: Tensor, mask: Tensor) -> Conditioning:
        """Conditioning from token ids [B, L] and mask [B, L]; padded positions come out as zeros."""
        x = self.embed(ids) + self.position[: ids.shape[1]]  # [B, L, D]
        for block in self.blocks:
            x = block(x, mask)
        real = mask[..., None].to(x.dtype)  # [B, L, 1]
        tokens = self.norm(x) * real  # zeroed padding: what Conditioning.cat pads with too
        pooled = tokens.sum(1) / real.sum(1)  # [B, D] masked mean (every prompt has BOS and EOS)
        return Conditioning(tokens, mask, pooled)

    def forward(self, prompts: list[str]) -> Conditioning:
        ids, mask = self.tokenizer(prompts, device=self.embed.weight.device)
        return self.encode_ids(ids, mask)
