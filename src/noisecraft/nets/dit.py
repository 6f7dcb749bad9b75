"""Diffusion Transformer (Peebles & Xie 2023) with text conditioning.

The image is cut into p×p patches, each a token with a fixed 2-D sin-cos position; the noise level
plus the pooled prompt drive adaLN-Zero (every block's norms are shifted and scaled, and its
residual branches gated, by a zero-initialised linear of that embedding). The per-token prompt
enters either by cross-attention after each self-attention (PixArt-α, Chen et al. 2023) or by
joint attention: image queries attend to image and text keys under one softmax (the text stream
itself is not updated, unlike SD3's MM-DiT). Zero-initialised as in the papers: the adaLN linears,
the final projection and (PixArt-α) the cross-attention output, so a fresh network outputs 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..components import register_component
from ..conditioning import Conditioning
from .layers import (
    NOISE_EMBEDDINGS,
    Attention,
    FeedForward,
    NoiseEmbedding,
    check_image,
    conv_flops,
    linear_flops,
    modulate,
    noise_vector,
    sincos_positions,
    unpack_conditioning,
    zero_init,
)

TEXT_ATTENTION = ("cross", "joint")


@dataclass
class DiTConfig:
    """Constructor arguments of ``DiT`` (saved as JSON beside the weights)."""

    image_size: int = 32  # the size flops_per_image refers to; any multiple of patch_size runs
    in_channels: int = 4  # 1 grey, 3 RGB, 4 latent; the output has as many
    patch_size: int = 2
    dim: int = 256  # token width
    depth: int = 6  # number of blocks
    head_dim: int = 64
    mlp_ratio: int = 4
    dropout: float = 0.0
    text_dim: int = 0  # width D of the text encoder's tokens; 0 → an unconditional-only net
    text_attention: str = "cross"  # "cross" or "joint", see the module docstring
    noise_channels: int = 256  # width of the sinusoidal noise features (DiT's frequency_embedding_size)
    noise_embedding: str = "positional"  # see layers.NoiseEmbedding
    noise_scale: float = 1.0  # c_noise is multiplied by this before the embedding

    def __post_init__(self) -> None:
        if min(self.image_size, self.in_channels, self.patch_size, self.dim, self.depth, self.head_dim) < 1:
            raise ValueError(f"DiTConfig: sizes and counts must be positive: {self}")
        if self.image_size % self.patch_size:
            raise ValueError(f"DiTConfig: image_size {self.image_size} is not a multiple of patch_size")
        if self.dim % self.head_dim or self.dim % 4:
            raise ValueError(f"DiTConfig: dim {self.dim} must be a multiple of head_dim and of 4")
        if self.text_attention not in TEXT_ATTENTION:
            raise ValueError(f"DiTConfig: text_attention must be one of {TEXT_ATTENTION}")
        if self.noise_embedding not in NOISE_EMBEDDINGS:
            raise ValueError(f"DiTConfig: noise_embedding must be one of {NOISE_EMBEDDINGS}")
        if self.text_dim < 0 or not 0 <= self.dropout < 1:
            raise ValueError("DiTConfig: text_dim must be ≥ 0 and dropout in [0, 1)")


class DiTBlock(nn.Module):
    """adaLN-Zero block: gated, modulated self-attention (+ text) and MLP."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.joint = cfg.text_attention == "joint"
        self.norm1 = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(cfg.dim, cfg.head_dim, cfg.text_dim if self.joint else 0)
        self.cross = None
        if cfg.text_dim and not self.joint:
            self.norm_cross = nn.LayerNorm(cfg.dim, eps=1e-6)
            self.cross = Attention(cfg.dim, cfg.head_dim, cfg.text_dim, self_attend=False)
        self.norm2 = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.mlp = FeedForward(cfg.dim, cfg.mlp_ratio, cfg.dropout)
        self.ada = nn.Linear(cfg.dim, 6 * cfg.dim)

    def forward(self, x: Tensor, emb: Tensor, tokens: Tensor | None, mask: Tensor | None) -> Tensor:
        """x [B, N, dim], emb [B, dim] (already through SiLU), tokens [B, L, D] or None."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(emb)[:, None].chunk(6, dim=-1)  # [B, 1, dim]
        h = modulate(self.norm1(x), shift1, scale1)
        x = x + gate1 * (self.attn(h, tokens, mask) if self.joint else self.attn(h))
        if self.cross is not None and tokens is not None:
            x = x + self.cross(self.norm_cross(x), tokens, mask)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))

    def flops(self, n: int, text_len: int) -> int:
        total = linear_flops(self.ada, 1) + self.mlp.flops(n)
        total += self.attn.flops(n, text_len if self.joint else 0)
        return total + (self.cross.flops(n, text_len) if self.cross is not None else 0)


@register_component("dit")
class DiT(nn.Module):
    """Diffusion Transformer: forward(x_in [B, C, H, W], c_noise [B], cond) → raw [B, C, H, W]."""

    config_class = DiTConfig

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        p, d = cfg.patch_size, cfg.dim
        self.patch_embed = nn.Conv2d(cfg.in_channels, d, p, stride=p)
        self.noise_embed = NoiseEmbedding(cfg.noise_channels, cfg.noise_embedding, cfg.noise_scale)
        self.embed_mlp = nn.Sequential(nn.Linear(cfg.noise_channels, d), nn.SiLU(), nn.Linear(d, d))
        self.pooled_proj = nn.Linear(cfg.text_dim, d) if cfg.text_dim else None
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.depth)])
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(d, 2 * d)
        self.proj_out = nn.Linear(d, p * p * cfg.in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-uniform linears, N(0, 0.02) noise MLP, then the zero-inits of DiT and PixArt-α."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # like a linear over flattened patches
        nn.init.zeros_(self.patch_embed.bias)
        for layer in (self.embed_mlp[0], self.embed_mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            zero_init(block.ada)
            if block.cross is not None:
                zero_init(block.cross.out)
        zero_init(self.ada_out)
        zero_init(self.proj_out)

    def forward(self, x_in: Tensor, c_noise: Tensor | float, cond: Conditioning | None = None) -> Tensor:
        """The raw output for noisy input x_in [B, C, H, W] at noise input c_noise [B]."""
        cfg, p = self.config, self.config.patch_size
        batch = check_image(x_in, cfg.in_channels, p, "DiT")
        tokens, mask, pooled = unpack_conditioning(cond, batch, cfg.text_dim, "DiT")
        emb = self.embed_mlp(self.noise_embed(noise_vector(c_noise, batch, x_in)))  # [B, dim]
        if pooled is not None:
            emb = emb + self.pooled_proj(pooled)
        emb = F.silu(emb)  # every adaLN linear starts with SiLU: apply it once

        h, w = x_in.shape[2] // p, x_in.shape[3] // p
        x = self.patch_embed(x_in).flatten(2).transpose(1, 2)  # [B, N, dim], N = h·w
        x = x + sincos_positions(h, w, cfg.dim, x)
        for block in self.blocks:
            x = block(x, emb, tokens, mask)
        shift, scale = self.ada_out(emb)[:, None].chunk(2, dim=-1)  # [B, 1, dim] each
        x = self.proj_out(modulate(self.norm_out(x), shift, scale))  # [B, N, p·p·C]
        x = x.reshape(batch, h, w, p, p, cfg.in_channels).permute(0, 5, 1, 3, 2, 4)  # [B, C, h, p, w, p]
        return x.reshape(batch, cfg.in_channels, h * p, w * p)

    def num_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def flops_per_image(self, text_len: int = 32, image_size: int | None = None) -> int:
        """Forward FLOPs for one image (default: config.image_size) and a prompt padded to text_len tokens.

        Counts 2 × the multiply-adds of convolutions, linears and attention matmuls (see layers);
        the text terms assume a prompt is given (text_dim > 0).
        """
        size = self.config.image_size if image_size is None else image_size
        if size % self.config.patch_size:
            raise ValueError(f"image_size {size} is not a multiple of patch_size {self.config.patch_size}")
        grid = size // self.config.patch_size
        n, text_len = grid * grid, text_len if self.config.text_dim else 0
        total = conv_flops(self.patch_embed, grid, grid)
        total += sum(linear_flops(m, 1) for m in self.embed_mlp if isinstance(m, nn.Linear))
        total += linear_flops(self.pooled_proj, 1) if self.pooled_proj is not None else 0
        total += sum(block.flops(n, text_len) for block in self.blocks)
        return total + linear_flops(self.ada_out, 1) + linear_flops(self.proj_out, n)
