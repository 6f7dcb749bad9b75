"""A text-conditioned 1-D U-Net over raw samples: the waveform counterpart of ``unet.UNet``.

The same design, one dimension down (waveform diffusion: WaveGrad, Chen et al. 2021; DiffWave, Kong
et al. 2021; a 1-D U-Net as in Moûsai, Schneider et al. 2023): ADM residual blocks whose second norm
is modulated by the noise level and the pooled prompt, LDM transformers with cross-attention to the
prompt's tokens at the coarse levels, the decoder concatenating the encoder's skips. Each level
shortens the signal by ``factor`` (8192 samples → 2048 → 512 → 128 → 32 at factor 4), so the coarse
levels see the whole second. Zero-initialised residual outputs and output convolution: a fresh
network outputs exactly 0.
``noisecraft train configs/tones_wave.toml`` trains it on ``tones`` waveforms; it exists to measure
the waveform against the spectrogram at equal CPU time (``benchmarks/sound_representation.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..components import register_component
from ..conditioning import Conditioning
from .layers import (
    NoiseEmbedding,
    TransformerBlock,
    add_residual,
    group_norm,
    modulate,
    noise_vector,
    unpack_conditioning,
    zero_init,
)


@dataclass
class WaveUNetConfig:
    """Constructor arguments of ``WaveUNet`` (saved as JSON beside the weights)."""

    in_channels: int = 1
    channels: int = 8  # width of the first level: narrow at full rate, where convolutions cost most
    channel_mult: tuple[int, ...] = (1, 2, 4, 8, 16)  # width of level i = channels · channel_mult[i]
    factor: int = 4  # each level is this many times shorter than the one above
    kernel: int = 5  # odd: the residual blocks' convolution width, in samples of their level
    blocks_per_level: int = 1  # residual blocks per level in the encoder (decoder: one more)
    attention_levels: tuple[int, ...] = (3, 4)  # levels (0 = full rate) with transformers; the middle has one
    head_dim: int = 32
    mlp_ratio: int = 4
    text_dim: int = 0  # width of the text encoder's tokens; 0 → unconditional

    def __post_init__(self) -> None:
        self.channel_mult, self.attention_levels = tuple(self.channel_mult), tuple(self.attention_levels)
        levels = len(self.channel_mult)
        if min(self.in_channels, self.channels, self.blocks_per_level, *self.channel_mult) < 1:
            raise ValueError("WaveUNetConfig: channels, channel_mult and blocks_per_level must be ≥ 1")
        if self.factor < 2 or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(
                f"WaveUNetConfig: need factor ≥ 2 and an odd kernel ≥ 1, got {self.factor}, {self.kernel}"
            )
        if any(not 0 <= level < levels for level in self.attention_levels):
            raise ValueError(f"WaveUNetConfig: attention_levels must lie in 0..{levels - 1}")
        if any((self.channels * self.channel_mult[level]) % self.head_dim for level in self.attention_levels):
            raise ValueError(f"WaveUNetConfig: attention levels' widths must be multiples of {self.head_dim}")

    @property
    def divisor(self) -> int:
        """The input length must be a multiple of this."""
        return self.factor ** (len(self.channel_mult) - 1)


class ResBlock1d(nn.Module):
    """Residual block whose second norm is modulated by the embedding (ADM's scale-shift norm)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, kernel: int):
        super().__init__()
        pad = kernel // 2
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv1d(c_in, c_out, kernel, padding=pad)
        self.emb, self.norm2 = nn.Linear(emb_dim, 2 * c_out), group_norm(c_out)
        self.conv2 = zero_init(nn.Conv1d(c_out, c_out, kernel, padding=pad))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x [B, c_in, N], emb [B, E] (already through SiLU) → [B, c_out, N]."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None].chunk(2, dim=1)  # [B, c_out, 1] each
        h = self.conv2(F.silu(modulate(self.norm2(h), shift, scale)))
        return add_residual(h, x if self.skip is None else self.skip(x))


class Transformer1d(nn.Module):
    """Samples → tokens → TransformerBlock → samples, added as a zero-initialised residual."""

    def __init__(self, channels: int, config: WaveUNetConfig):
        super().__init__()
        self.norm, self.proj_in = group_norm(channels), nn.Linear(channels, channels)
        self.block = TransformerBlock(channels, config.head_dim, config.text_dim, config.mlp_ratio)
        self.proj_out = zero_init(nn.Linear(channels, channels))

    def forward(self, x: Tensor, tokens: Tensor | None, mask: Tensor | None) -> Tensor:
        h = self.proj_in(self.norm(x).transpose(1, 2))  # [B, N, C]
        h = self.proj_out(self.block(h, tokens, mask))
        return x + h.transpose(1, 2)


class Level(nn.Module):
    """The residual blocks of one level, each followed by a transformer where the level has one."""

    def __init__(self, widths: list[tuple[int, int]], emb_dim: int, attend: bool, config: WaveUNetConfig):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock1d(a, b, emb_dim, config.kernel) for a, b in widths)
        self.attn = nn.ModuleList(Transformer1d(b, config) for _, b in widths) if attend else None

    def forward(
        self,
        x: Tensor,
        emb: Tensor,
        tokens: Tensor | None,
        mask: Tensor | None,
        take: list[Tensor] | None = None,
        keep: list[Tensor] | None = None,
    ) -> Tensor:
        """x [B, C, N] → [B, C', N]; each block first joins the last of ``take`` (the decoder's skips)
        along channels, and its output is appended to ``keep`` (the encoder's)."""
        for i, block in enumerate(self.blocks):
            x = block(x if take is None else torch.cat([x, take.pop()], dim=1), emb)
            if self.attn is not None:
                x = self.attn[i](x, tokens, mask)
            if keep is not None:
                keep.append(x)
        return x


@register_component("wave_unet")
class WaveUNet(nn.Module):
    """``Net(x_in [B, C, N], c_noise [B], cond) -> raw [B, C, N]`` over waveforms; N a multiple of
    ``config.divisor``."""

    config_class = WaveUNetConfig

    def __init__(self, config: WaveUNetConfig):
        super().__init__()
        cfg, self.config = config, config
        widths = [cfg.channels * m for m in cfg.channel_mult]
        emb_dim = 4 * cfg.channels
        self.noise_embed = NoiseEmbedding(cfg.channels)
        self.embed_mlp = nn.Sequential(
            nn.Linear(cfg.channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.pooled_proj = nn.Linear(cfg.text_dim, emb_dim) if cfg.text_dim else None
        self.conv_in = nn.Conv1d(cfg.in_channels, widths[0], cfg.kernel, padding=cfg.kernel // 2)
        n = cfg.blocks_per_level
        self.down, self.shrink = nn.ModuleList(), nn.ModuleList()
        skip_widths, prev = [widths[0]], widths[0]
        for level, w in enumerate(widths):
            pairs = [(prev if i == 0 else w, w) for i in range(n)]
            self.down.append(Level(pairs, emb_dim, level in cfg.attention_levels, cfg))
            skip_widths += [w] * n
            prev = w
            if level < len(widths) - 1:
                self.shrink.append(nn.Conv1d(w, w, cfg.factor, stride=cfg.factor))
                skip_widths.append(w)
        self.mid = Level([(prev, prev), (prev, prev)], emb_dim, True, cfg)
        self.up, self.grow = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(widths))):
            w, pairs = widths[level], []
            for _ in range(n + 1):
                pairs.append((prev + skip_widths.pop(), w))
                prev = w
            self.up.append(Level(pairs, emb_dim, level in cfg.attention_levels, cfg))
            if level > 0:
                self.grow.append(nn.Conv1d(w, w, 3, padding=1))
        self.norm_out = group_norm(prev)
        self.conv_out = zero_init(nn.Conv1d(prev, cfg.in_channels, cfg.kernel, padding=cfg.kernel // 2))

    def _embedding(self, x: Tensor, c_noise: Tensor | float, pooled: Tensor | None) -> Tensor:
        emb = self.embed_mlp(self.noise_embed(noise_vector(c_noise, x.shape[0], x)))  # [B, E]
        if pooled is not None and self.pooled_proj is not None:
            emb = emb + self.pooled_proj(pooled)
        return F.silu(emb)

    def forward(self, x_in: Tensor, c_noise: Tensor | float, cond: Conditioning | None = None) -> Tensor:
        c = self.config
        if x_in.ndim != 3 or x_in.shape[1] != c.in_channels or x_in.shape[2] % c.divisor:
            raise ValueError(
                f"WaveUNet takes [B, {c.in_channels}, N] with N a multiple of {c.divisor}, "
                f"got {tuple(x_in.shape)}"
            )
        tokens, mask, pooled = unpack_conditioning(cond, x_in.shape[0], c.text_dim, type(self).__name__)
        emb = self._embedding(x_in, c_noise, pooled)
        h = self.conv_in(x_in)  # [B, C0, N]
        skips = [h]
        for level, stage in enumerate(self.down):
            h = stage(h, emb, tokens, mask, keep=skips)
            if level < len(self.shrink):
                h = self.shrink[level](h)  # [B, C, N / factor]
                skips.append(h)
        h = self.mid(h, emb, tokens, mask)
        for i, stage in enumerate(self.up):
            h = stage(h, emb, tokens, mask, take=skips)
            if i < len(self.grow):
                h = self.grow[i](F.interpolate(h, scale_factor=self.config.factor, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
