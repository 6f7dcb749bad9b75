"""A small residual MLP denoiser network for low-dimensional data (the 2-D toy mixtures).

``Net(x_in [B, dim], c_noise [B], cond) -> raw [B, dim]``: the noise level enters as sinusoidal
features added to every hidden layer, a prompt (if any) through its pooled vector, as in the
image networks but without convolutions or attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..components import register_component
from ..conditioning import Conditioning
from .layers import NOISE_EMBEDDINGS, NoiseEmbedding, noise_vector, unpack_conditioning, zero_init


@dataclass
class MLPConfig:
    dim: int = 2  # data dimension; the output has as many
    width: int = 128  # hidden width
    depth: int = 3  # residual blocks
    noise_channels: int = 32  # sinusoidal features of c_noise
    noise_embedding: str = "positional"  # see layers.NoiseEmbedding
    text_dim: int = 0  # width D of the text encoder's pooled vector; 0 → unconditional
    input_features: int = 0  # random Fourier features of x_in (Tancik et al. 2020); 0 = raw x only
    input_scale: float = 1.0  # their frequency std: higher resolves finer detail

    def __post_init__(self) -> None:
        if min(self.dim, self.width, self.noise_channels) <= 0 or self.depth < 0:
            raise ValueError(f"dim, width, noise_channels must be positive and depth >= 0, got {self}")
        if self.input_features % 2 or self.input_features < 0 or self.input_scale <= 0:
            raise ValueError("input_features must be even and >= 0, input_scale positive")
        if self.noise_embedding not in NOISE_EMBEDDINGS:
            raise ValueError(
                f"noise_embedding must be one of {NOISE_EMBEDDINGS}, got {self.noise_embedding!r}"
            )


class ResidualBlock(nn.Module):
    """h + Linear(SiLU(Linear(SiLU(LN(h) + emb)))): the second layer starts at zero (identity block)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, width), zero_init(nn.Linear(width, width))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.fc2(F.silu(self.fc1(F.silu(self.norm(h) + emb))))


@register_component("mlp")
class MLP(nn.Module):
    """Residual MLP over vectors, conditioned on the noise level (and optionally a pooled prompt)."""

    config_class = MLPConfig

    def __init__(self, config: MLPConfig | None = None):
        super().__init__()
        self.config = cfg = config or MLPConfig()
        self.noise_embed = NoiseEmbedding(cfg.noise_channels, cfg.noise_embedding)
        self.embed_mlp = nn.Sequential(nn.Linear(cfg.noise_channels, cfg.width), nn.SiLU())
        self.pooled_proj = nn.Linear(cfg.text_dim, cfg.width) if cfg.text_dim else None
        # fixed seeded frequencies, so they need not be saved (like layers.NoiseEmbedding's fourier)
        freqs = torch.randn(cfg.dim, cfg.input_features // 2, generator=torch.Generator().manual_seed(0))
        self.register_buffer("freqs", freqs * cfg.input_scale * 2 * math.pi, persistent=False)  # [dim, F/2]
        self.inp = nn.Linear(cfg.dim + cfg.input_features, cfg.width)
        self.blocks = nn.ModuleList(ResidualBlock(cfg.width) for _ in range(cfg.depth))
        self.out = nn.Sequential(nn.LayerNorm(cfg.width), nn.SiLU(), zero_init(nn.Linear(cfg.width, cfg.dim)))

    def forward(self, x_in: Tensor, c_noise: Tensor | float, cond: Conditioning | None = None) -> Tensor:
        """The raw output for noisy vectors x_in [B, dim] at noise input c_noise [B]."""
        if x_in.ndim != 2 or x_in.shape[1] != self.config.dim:
            raise ValueError(f"MLP: x_in must be [B, {self.config.dim}], got {tuple(x_in.shape)}")
        batch = x_in.shape[0]
        _, _, pooled = unpack_conditioning(cond, batch, self.config.text_dim, "MLP")
        emb = self.embed_mlp(self.noise_embed(noise_vector(c_noise, batch, x_in)))  # [B, W]
        if pooled is not None:
            emb = emb + self.pooled_proj(pooled)
        proj = x_in @ self.freqs.to(x_in.dtype)  # [B, F/2]
        h = self.inp(torch.cat([x_in, proj.cos(), proj.sin()], dim=1))  # [B, W]
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)  # [B, dim]
