"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, §3 and appendix G).

Images [B, 3, H, W] in [-1, 1] ↔ latents [B, 4, H/f, W/f], f = 2^(levels − 1) (8 for Stable
Diffusion). The encoder outputs a diagonal Gaussian (mean, log-variance) per latent pixel; ``encode``
returns its mean, ``sample`` draws from it. Neither scales the latents: ``config.scale_factor`` is the
factor a diffusion model's sampling space multiplies them by (``model.latent.LatentSpace``).

The layout is that of Stable Diffusion 1/2/XL's VAE, so their weights load through
``noisecraft.formats.vae``: residual blocks with GroupNorm(ε = 10⁻⁶) and SiLU, stride-2 convolutions
down, nearest-neighbour + convolution up, and one single-head self-attention between two residual
blocks at the lowest resolution on each side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..components import register_component
from .layers import TokenLinear, add_residual, check_image
from .tiles import Tiling, blend_tiles
from .unet import Upsample

NORM_EPS = 1e-6  # the LDM autoencoder's GroupNorm epsilon (PyTorch's default is 1e-5)
LOGVAR_RANGE = (-30.0, 20.0)  # the posterior's log-variance is clamped to this (LDM's DiagonalGaussian)


@dataclass
class AutoencoderConfig:
    """Constructor arguments of ``AutoencoderKL`` (saved as JSON beside the weights)."""

    in_channels: int = 3  # image channels, in and out
    latent_channels: int = 4
    channels: tuple[int, ...] = (128, 256, 512, 512)  # width of each level, full resolution first
    layers_per_block: int = 2  # residual blocks per encoder level (decoder: one more)
    norm_groups: int = 32
    scale_factor: float = 0.18215  # latents × this ≈ unit variance (SD 1/2: 0.18215, SDXL: 0.13025)

    def __post_init__(self) -> None:
        if min(self.in_channels, self.latent_channels, self.layers_per_block, self.norm_groups) < 1:
            raise ValueError(f"AutoencoderConfig: sizes and counts must be positive: {self}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"AutoencoderConfig: channels must be positive integers, got {self.channels}")
        uneven = [c for c in self.channels if c % self.norm_groups]
        if uneven:
            raise ValueError(
                f"AutoencoderConfig: widths {uneven} are not multiples of norm_groups={self.norm_groups}"
            )
        if not (math.isfinite(self.scale_factor) and self.scale_factor > 0):
            raise ValueError(f"AutoencoderConfig: scale_factor must be positive, got {self.scale_factor}")

    @property
    def downsampling(self) -> int:
        """The factor f by which latents are smaller than images."""
        return 2 ** (len(self.channels) - 1)


def norm(channels: int, groups: int) -> nn.GroupNorm:
    """The autoencoder's GroupNorm (ε = 10⁻⁶, as in the LDM code)."""
    return nn.GroupNorm(groups, channels, eps=NORM_EPS)


class ResBlock(nn.Module):
    """Pre-activation residual block without time embedding (the LDM autoencoder's ResnetBlock)."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = norm(c_out, groups), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor) -> Tensor:
        """x [B, c_in, H, W] → [B, c_out, H, W]."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))  # (dropout 0 in every released VAE: omitted)
        return add_residual(h, x if self.skip is None else self.skip(x))  # h: conv2's fresh output


class SelfAttention(nn.Module):
    """Single-head self-attention over the pixels of a feature map, added to it (LDM's AttnBlock)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = norm(channels, groups)
        self.q, self.k, self.v = (TokenLinear(channels, channels) for _ in range(3))
        self.out = TokenLinear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] → [B, C, H, W]."""
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2).contiguous()  # [B, H·W, C]
        q, k, v = (proj(tokens)[:, None] for proj in (self.q, self.k, self.v))  # [B, 1, H·W, C] each
        attended = F.scaled_dot_product_attention(q, k, v)[:, 0]  # [B, H·W, C], scale 1/√C
        out = self.out(attended).transpose(1, 2).reshape(b, c, h, w)  # [B, C, H, W]
        return x + out


class MidBlock(nn.Module):
    """Residual block, self-attention, residual block at the lowest resolution."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block1 = ResBlock(channels, channels, groups)
        self.attn = SelfAttention(channels, groups)
        self.block2 = ResBlock(channels, channels, groups)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, h, w] → [B, C, h, w]."""
        return self.block2(self.attn(self.block1(x)))


class Downsample(nn.Conv2d):
    """Halve the resolution: pad one pixel right and bottom, then a stride-2 3×3 convolution (LDM)."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] → [B, C, H/2, W/2]."""
        return super().forward(F.pad(x, (0, 1, 0, 1)))


class Level(nn.Module):
    """The residual blocks of one resolution, then an optional down- or up-sampling."""

    def __init__(self, widths: list[int], groups: int, resample: type[nn.Module] | None):
        super().__init__()
        pairs = zip(widths[:-1], widths[1:])
        self.blocks = nn.ModuleList(ResBlock(c_in, c_out, groups) for c_in, c_out in pairs)
        self.resample = resample(widths[-1]) if resample is not None else None

    def forward(self, x: Tensor) -> Tensor:
        """x [B, widths[0], H, W] → [B, widths[-1], H', W'] (H' = H/2, H or 2H)."""
        for block in self.blocks:
            x = block(x)
        return x if self.resample is None else self.resample(x)


class Encoder(nn.Module):
    """Images [B, in_channels, H, W] → posterior moments [B, 2·latent_channels, H/f, W/f]."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        c, n, last = cfg.channels, cfg.layers_per_block, len(cfg.channels) - 1
        self.conv_in = nn.Conv2d(cfg.in_channels, c[0], 3, padding=1)
        self.levels = nn.ModuleList(
            Level([c[max(i - 1, 0)]] + [c[i]] * n, cfg.norm_groups, Downsample if i < last else None)
            for i in range(len(c))
        )
        self.mid = MidBlock(c[-1], cfg.norm_groups)
        self.norm_out = norm(c[-1], cfg.norm_groups)
        self.conv_out = nn.Conv2d(c[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)  # [B, c[0], H, W]
        for level in self.levels:
            x = level(x)
        x = self.mid(x)  # [B, c[-1], H/f, W/f]
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """Latents [B, latent_channels, h, w] → images [B, in_channels, f·h, f·w]."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        c, n = cfg.channels[::-1], cfg.layers_per_block + 1  # widths deepest first
        last = len(c) - 1
        self.conv_in = nn.Conv2d(cfg.latent_channels, c[0], 3, padding=1)
        self.mid = MidBlock(c[0], cfg.norm_groups)
        self.levels = nn.ModuleList(  # deepest first, in the order they run
            Level([c[max(i - 1, 0)]] + [c[i]] * n, cfg.norm_groups, Upsample if i < last else None)
            for i in range(len(c))
        )
        self.norm_out = norm(c[-1], cfg.norm_groups)
        self.conv_out = nn.Conv2d(c[-1], cfg.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid(self.conv_in(z))  # [B, channels[-1], h, w]
        for level in self.levels:
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))  # [B, in_channels, f·h, f·w]


@register_component("autoencoder_kl")
class AutoencoderKL(nn.Module):
    """KL autoencoder (Rombach et al. 2022): encode(images) → latents, decode(latents) → images."""

    config_class = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = cfg = config
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)
        self.decoder = Decoder(cfg)

    def posterior(self, images: Tensor, tiling: Tiling | None = None) -> tuple[Tensor, Tensor]:
        """Images [B, C, H, W] in [-1, 1] → posterior (mean, log-variance), each [B, latent, H/f, W/f];
        ``tiling``: encode overlapping tiles of that many pixels (``nets.tiles``)."""
        f = self.config.downsampling
        check_image(images, self.config.in_channels, f, "AutoencoderKL")
        if tiling is None:
            moments = self._moments(images)  # [B, 2·latent, H/f, W/f]
        else:
            tiling.check(f)
            moments = blend_tiles(self._moments, images, tiling.size, tiling.overlap, Fraction(1, f))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def _moments(self, images: Tensor) -> Tensor:
        """[B, C, H, W] → [B, 2·latent, H/f, W/f]: posterior mean and log-variance, stacked."""
        return self.quant_conv(self.encoder(images))

    def encode(self, images: Tensor, tiling: Tiling | None = None) -> Tensor:
        """Images [B, C, H, W] in [-1, 1] → the posterior mean [B, latent, H/f, W/f] (unscaled)."""
        return self.posterior(images, tiling)[0]

    def sample(
        self, images: Tensor, generator: torch.Generator | None = None, tiling: Tiling | None = None
    ) -> Tensor:
        """A draw mean + σ·ε from the posterior, ε ~ N(0, I) from ``generator`` (on its device)."""
        mean, logvar = self.posterior(images, tiling)
        device = mean.device if generator is None else generator.device
        eps = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype)
        return mean + (0.5 * logvar).exp() * eps.to(mean.device)

    def decode(self, latents: Tensor, tiling: Tiling | None = None) -> Tensor:
        """Latents [B, latent, h, w] (unscaled) → images [B, C, f·h, f·w], about [-1, 1], not clamped;
        ``tiling``: decode overlapping tiles of that many pixels, blended (``nets.tiles``)."""
        check_image(latents, self.config.latent_channels, 1, "AutoencoderKL.decode")
        if tiling is None:
            return self._decode(latents)
        f = self.config.downsampling
        tiling.check(f)
        return blend_tiles(self._decode, latents, tiling.size // f, tiling.overlap // f, Fraction(f))

    def _decode(self, latents: Tensor) -> Tensor:
        """[B, latent, h, w] → [B, C, f·h, f·w]."""
        return self.decoder(self.post_quant_conv(latents))

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(C, H, W) of an image → (latent_channels, H/f, W/f) of its latents."""
        channels, height, width = image_shape
        f = self.config.downsampling
        if channels != self.config.in_channels or height % f or width % f:
            raise ValueError(
                f"AutoencoderKL: image shape {tuple(image_shape)} needs {self.config.in_channels} channels "
                f"and a height and width divisible by {f}"
            )
        return self.config.latent_channels, height // f, width // f
