"""The U-Net's text-side extras: a layout map read from the prompt alone, and trainable layers over a
frozen encoder's tokens — both start as the identity (zero-initialised outputs), so they can grow a
trained network (``model.init_new``) — and SDXL's micro-conditioning on the pooled prompt and sizes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import (
    Attention,
    FeedForward,
    InferenceMemo,
    NoiseEmbedding,
    linear_flops,
    sincos_positions,
    zero_init,
)


class TextLayout(nn.Module):
    """A feature map read from the prompt alone: cross-attention from each position's fixed 2-D sin-cos
    code (no image features) to the prompt's tokens, through a zero-initialised projection.

    At high σ the image input is noise, and a transformer's queries, made from its features, are
    noise too: measured on shapes, a U-Net trained only at σ = 80 on two-shape captions did not learn
    which named shape goes left in 1,000 steps, while a small transformer from the same words to the
    8×8 layout did. Here the queries are positions only, so "red circle left of blue square" can
    put red on the left at any σ; it depends on the prompt alone and is computed once per prompt.
    """

    def __init__(self, channels: int, head_dim: int, text_dim: int):
        super().__init__()
        self.channels = channels
        self.attn = Attention(channels, head_dim, context_dim=text_dim, self_attend=False)
        self.out = zero_init(nn.Linear(channels, channels))
        self.memo = InferenceMemo()  # the same prompt at every sampler step

    def forward(self, tokens: Tensor, mask: Tensor | None, height: int, width: int) -> Tensor:
        """tokens [B, L, D], mask [B, L] → [B, height·width, channels]."""
        return self.memo(self, (tokens, mask), lambda: self._layout(tokens, mask, height, width))

    def _layout(self, tokens: Tensor, mask: Tensor | None, height: int, width: int) -> Tensor:
        where = sincos_positions(height, width, self.channels, tokens)  # [HW, C]; attn.to_q learns from it
        return self.out(self.attn(where.expand(tokens.shape[0], *where.shape), tokens, mask))  # [B, HW, C]

    def flops(self, size: int, text_len: int) -> int:
        n = size * size
        return self.attn.flops(n, text_len) + linear_flops(self.out, n)


class TokenRefiner(nn.Module):
    """Trainable pre-norm transformer layers over a frozen text encoder's tokens, added back through a
    zero-initialised projection (the identity at first, so it can grow a trained network).

    Cross-attention is blind to the order of its keys, and a frozen sentence encoder's last-layer tokens
    keep little of where each word stood: "a red circle left of a blue square" and "a blue square left
    of a red circle" then condition a U-Net identically. These layers see each token's position (1-D
    sin-cos, added after the input projection) so training can work out which colour belongs to which
    shape and which shape a relation puts first.

    With ``window`` > 0 a convolution over the token axis first adds each token's neighbours to it
    (zero-initialised): "star" in "a green star" and in "a blue star" are near-identical MiniLM tokens,
    so an image feature that asks "what is the green thing?" finds no key that answers; the window
    binds a noun to its adjectives directly, where attention has to learn to look one word back.
    """

    def __init__(
        self, text_dim: int, width: int, layers: int, head_dim: int, mlp_ratio: int, window: int = 0
    ) -> None:
        super().__init__()
        self.proj_in = nn.Linear(text_dim, width)
        self.phrase = zero_init(nn.Conv1d(width, width, window, padding=window // 2)) if window else None
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(2 * layers))
        # Cross-attention from the tokens to themselves is self-attention that honours the padding mask.
        self.attns = nn.ModuleList(
            Attention(width, head_dim, context_dim=width, self_attend=False) for _ in range(layers)
        )
        self.mlps = nn.ModuleList(FeedForward(width, mlp_ratio) for _ in range(layers))
        self.proj_out = zero_init(nn.Linear(width, text_dim))
        self.memo = InferenceMemo()  # a sampler refines the same prompt at every step: once is enough

    def forward(self, tokens: Tensor, mask: Tensor | None) -> Tensor:
        """tokens [B, L, D], mask [B, L] bool (True = real) → refined tokens [B, L, D]."""
        return self.memo(self, (tokens, mask), lambda: self._refine(tokens, mask))

    def _refine(self, tokens: Tensor, mask: Tensor | None) -> Tensor:
        h = self.proj_in(tokens)  # [B, L, width]
        # [L, width]: token i at column i of a 1 × L grid, so the row half of the features is constant
        # (sin 0, cos 0): a 1-D table would use all of them, but the shipped shapes model learnt this one.
        h = h + sincos_positions(1, h.shape[1], h.shape[2], h)
        if self.phrase is not None:
            h = self.mix_phrases(h, mask)
        for i, (attn, mlp) in enumerate(zip(self.attns, self.mlps)):
            q = self.norms[2 * i](h)
            h = h + attn(q, q, mask)
            h = h + mlp(self.norms[2 * i + 1](h))
        return tokens + self.proj_out(h)

    def mix_phrases(self, h: Tensor, mask: Tensor | None) -> Tensor:
        """h [B, L, width] plus the phrase window over the token axis; padding tokens add nothing."""
        real = h if mask is None else h * mask[..., None]  # [B, L, width]
        return h + self.phrase(real.transpose(1, 2)).transpose(1, 2)

    def flops(self, text_len: int) -> int:
        """Forward FLOPs for one prompt of ``text_len`` tokens."""
        total = linear_flops(self.proj_in, text_len) + linear_flops(self.proj_out, text_len)
        if self.phrase is not None:
            phrase = self.phrase
            total += 2 * text_len * phrase.in_channels * phrase.out_channels * phrase.kernel_size[0]
        for attn, mlp in zip(self.attns, self.mlps):
            total += attn.flops(text_len, text_len) + mlp.flops(text_len)
        return total


class MicroConditioning(nn.Module):
    """SDXL's added embedding (Podell et al. 2023, §2.2): the pooled prompt and six size numbers —
    original height, width, crop top, left, target height, width, in pixels — each in sinusoidal
    features, through an MLP into a vector added to the noise embedding. The numbers are those of an
    uncropped image of the size being made (what diffusers and A1111 pass by default)."""

    SIZE_IDS = 6

    def __init__(self, pooled_dim: int, features: int, emb_dim: int, pixels_per_cell: int):
        super().__init__()
        self.features, self.pixels_per_cell = features, pixels_per_cell
        self.size_embed = NoiseEmbedding(features)  # cos/sin at frequencies 1 … 1/10⁴, as timesteps
        self.mlp = nn.Sequential(
            nn.Linear(pooled_dim + self.SIZE_IDS * features, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

    def forward(self, pooled: Tensor, height: int, width: int) -> Tensor:
        """pooled [B, P] and the input's size in cells → [B, E]."""
        h, w = height * self.pixels_per_cell, width * self.pixels_per_cell
        ids = torch.tensor([h, w, 0, 0, h, w], dtype=torch.float32, device=pooled.device)  # [6]
        sizes = self.size_embed(ids).reshape(1, -1).to(pooled.dtype)  # [1, 6·features]
        return self.mlp(torch.cat([pooled, sizes.expand(pooled.shape[0], -1)], dim=1))

    def flops(self) -> int:
        return sum(linear_flops(m, 1) for m in self.mlp if isinstance(m, nn.Linear))
