"""A text-conditioned U-Net: ADM residual blocks (Dhariwal & Nichol 2021) + LDM transformers (Rombach 2022).

Read top to bottom: the noise level c_noise and the pooled prompt make one embedding vector that
modulates every residual block (scale-shift); the per-token prompt enters through cross-attention
in the transformer blocks at the chosen resolutions; the decoder concatenates the encoder's skips.
The output convolution, each residual block's last convolution and each transformer's output
projection start at zero (ADM), so a fresh network outputs exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..components import register_component
from ..conditioning import Conditioning
from .layers import (
    NOISE_EMBEDDINGS,
    Attention,
    FeedForward,
    InferenceMemo,
    NoiseEmbedding,
    TokenLinear,
    TransformerBlock,
    add_residual,
    check_image,
    conv_flops,
    group_norm,
    linear_flops,
    modulate,
    noise_vector,
    sincos_positions,
    unpack_conditioning,
    uses_onednn,
    zero_init,
)


@dataclass
class UNetConfig:
    """Constructor arguments of ``UNet`` (saved as JSON beside the weights)."""

    image_size: int = 32  # the size attention_resolutions and flops_per_image refer to
    in_channels: int = 3  # 1 grey, 3 RGB, 4 latent; the output has as many
    channels: int = 64  # width of the first level
    channel_mult: tuple[int, ...] = (1, 2, 2)  # width of level i = channels · channel_mult[i]
    blocks_per_level: int = 2  # residual blocks per level in the encoder (decoder: one more)
    attention_resolutions: tuple[int, ...] = (16, 8)  # levels (by resolution at image_size) with transformers
    head_dim: int = 32
    mlp_ratio: int = 4  # transformer MLP hidden width = mlp_ratio · width
    mid_attention: bool = True  # a transformer between the middle residual blocks
    attention_positions: bool = False  # transformers add a learnt map of 2-D sin-cos positions (zero at init)
    text_layout: bool = False  # transformers add a map read from the prompt alone (TextLayout; zero at init)
    dropout: float = 0.0
    text_dim: int = 0  # width D of the text encoder's tokens; 0 → an unconditional-only net
    text_layers: int = 0  # trainable transformer layers over the (frozen) encoder's tokens; see TokenRefiner
    text_width: int = 128  # their width (a bottleneck: cheap beside the U-Net)
    text_window: int = 0  # odd: the refiner first adds each token's neighbours (zero at init); 0 = off
    noise_embedding: str = "positional"  # see layers.NoiseEmbedding
    noise_scale: float = 1.0  # c_noise is multiplied by this before the embedding

    def __post_init__(self) -> None:
        if min(self.image_size, self.in_channels, self.channels, self.blocks_per_level, self.head_dim) < 1:
            raise ValueError(f"UNetConfig: sizes and counts must be positive: {self}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"UNetConfig: channel_mult must be positive integers, got {self.channel_mult}")
        if self.image_size % self.downsampling:
            raise ValueError(
                f"UNetConfig: image_size {self.image_size} is not divisible by the down-sampling "
                f"factor {self.downsampling} of {len(self.channel_mult)} levels"
            )
        unknown = set(self.attention_resolutions) - set(self.resolutions)
        if unknown:
            raise ValueError(
                f"UNetConfig: attention_resolutions {sorted(unknown)} match no level; "
                f"level resolutions at image_size {self.image_size}: {self.resolutions}"
            )
        for level, mult in enumerate(self.channel_mult):
            attends = self.attends(level) or (self.mid_attention and level == len(self.channel_mult) - 1)
            if attends and (self.channels * mult) % self.head_dim:
                raise ValueError(f"UNetConfig: width {self.channels * mult} is not a multiple of head_dim")
        if self.noise_embedding not in NOISE_EMBEDDINGS:
            raise ValueError(f"UNetConfig: noise_embedding must be one of {NOISE_EMBEDDINGS}")
        if self.text_dim < 0 or not 0 <= self.dropout < 1:
            raise ValueError("UNetConfig: text_dim must be ≥ 0 and dropout in [0, 1)")
        if self.text_layout and not self.text_dim:
            raise ValueError("UNetConfig: text_layout needs text_dim > 0")
        refiner_fits = self.text_dim > 0 and self.text_width > 0 and self.text_width % self.head_dim == 0
        if self.text_layers < 0 or (self.text_layers and not refiner_fits):
            raise ValueError(
                "UNetConfig: text_layers must be ≥ 0 and need text_dim > 0, text_width a multiple of head_dim"
            )
        if self.text_window < 0 or (self.text_window and (self.text_window % 2 == 0 or not self.text_layers)):
            raise ValueError("UNetConfig: text_window must be 0 or an odd width, and needs text_layers > 0")

    @property
    def downsampling(self) -> int:
        """The factor by which the deepest level is smaller than the input."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map size of each level at ``image_size``."""
        return tuple(self.image_size // 2**level for level in range(len(self.channel_mult)))

    def attends(self, level: int) -> bool:
        """Whether the encoder/decoder blocks of ``level`` carry a transformer."""
        return self.resolutions[level] in self.attention_resolutions


class ResBlock(nn.Module):
    """Residual block whose second norm is modulated by the embedding (ADM's scale-shift norm)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.dropout = group_norm(c_out), nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x [B, c_in, H, W], emb [B, E] (already through SiLU) → [B, c_out, H, W]."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # [B, c_out, 1, 1] each
        h = self.conv2(self.dropout(F.silu(modulate(self.norm2(h), shift, scale))))
        return add_residual(h, x if self.skip is None else self.skip(x))  # h: conv2's fresh output

    def flops(self, size: int) -> int:
        total = conv_flops(self.conv1, size, size) + conv_flops(self.conv2, size, size)
        total += linear_flops(self.emb, 1)
        return total + (conv_flops(self.skip, size, size) if self.skip is not None else 0)


class TextLayout(nn.Module):
    """A feature map read from the prompt alone: cross-attention from each position's fixed 2-D sin-cos
    code (no image features) to the prompt's tokens, through a zero-initialised projection.

    At high σ the image input is noise, and a transformer's queries, made from its features, are
    noise too: measured on shapes, a U-Net trained only at σ = 80 on two-shape captions did not learn
    which named shape goes left in 1,000 steps, while a small transformer from the same words to the
    8×8 layout did. Here the queries are positions only, so "red circle left of blue square" can
    put red on the left at any σ; it depends on the prompt alone and is computed once per prompt.
    """

    def __init__(self, channels: int, config: UNetConfig):
        super().__init__()
        self.channels = channels
        self.attn = Attention(channels, config.head_dim, context_dim=config.text_dim, self_attend=False)
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


class SpatialTransformer(nn.Module):
    """Feature map → tokens → TransformerBlock → feature map, added as a zero-initialised residual."""

    def __init__(self, channels: int, config: UNetConfig):
        super().__init__()
        self.norm, self.proj_in = group_norm(channels), TokenLinear(channels, channels)
        # Where each token sits, said outright instead of left to the convolutions' zero padding; zero
        # at first, so a trained net can grow it (model.init_new).
        self.pos_proj = zero_init(TokenLinear(channels, channels)) if config.attention_positions else None
        self.layout = TextLayout(channels, config) if config.text_layout else None
        self.block = TransformerBlock(
            channels, config.head_dim, config.text_dim, config.mlp_ratio, config.dropout
        )
        self.proj_out = zero_init(TokenLinear(channels, channels))

    def forward(self, x: Tensor, tokens: Tensor | None, mask: Tensor | None) -> Tensor:
        b, c, height, width = x.shape
        h = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))  # [B, HW, C]; a view if channels_last
        if self.pos_proj is not None:
            h = h + self.pos_proj(sincos_positions(height, width, c, h))  # [HW, C] broadcast over B
        if self.layout is not None and tokens is not None:
            h = h + self.layout(tokens, mask, height, width)  # [B, HW, C]
        h = self.proj_out(self.block(h, tokens, mask))  # [B, HW, C]
        return x + h.transpose(1, 2).reshape(b, c, height, width)

    def flops(self, size: int, text_len: int) -> int:
        n = size * size
        total = linear_flops(self.proj_in, n) + self.block.flops(n, text_len) + linear_flops(self.proj_out, n)
        total += linear_flops(self.pos_proj, n) if self.pos_proj is not None else 0
        return total + (self.layout.flops(size, text_len) if self.layout is not None else 0)


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


class UNetBlock(nn.Module):
    """One step of a level: a residual block, then (at attention resolutions) a transformer."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, config: UNetConfig, attention: bool):
        super().__init__()
        self.res = ResBlock(c_in, c_out, emb_dim, config.dropout)
        self.attn = SpatialTransformer(c_out, config) if attention else None

    def forward(self, x: Tensor, emb: Tensor, tokens: Tensor | None, mask: Tensor | None) -> Tensor:
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x, tokens, mask)

    def flops(self, size: int, text_len: int) -> int:
        return self.res.flops(size) + (self.attn.flops(size, text_len) if self.attn is not None else 0)


class Downsample(nn.Conv2d):
    """Halve the resolution with a stride-2 3×3 convolution."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3, stride=2, padding=1)

    def flops(self, size: int) -> int:  # size: the input resolution
        return conv_flops(self, size // 2, size // 2)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour then a 3×3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

    def flops(self, size: int) -> int:  # size: the input resolution
        return conv_flops(self.conv, 2 * size, 2 * size)


@register_component("unet")
class UNet(nn.Module):
    """Text-conditioned U-Net: forward(x_in [B, C, H, W], c_noise [B], cond) → raw [B, C, H, W]."""

    config_class = UNetConfig
    # NHWC activations on CPU: oneDNN's convolutions and TokenLinear's run faster on them, and the
    # transformers' tokens are then a view of the feature map (benchmarks/unet_variants.py).
    nhwc_on_cpu: bool = True

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        emb_dim = 4 * cfg.channels
        self.noise_embed = NoiseEmbedding(cfg.channels, cfg.noise_embedding, cfg.noise_scale)
        self.embed_mlp = nn.Sequential(
            nn.Linear(cfg.channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.pooled_proj = nn.Linear(cfg.text_dim, emb_dim) if cfg.text_dim else None
        self.text_refiner = (
            TokenRefiner(
                cfg.text_dim, cfg.text_width, cfg.text_layers, cfg.head_dim, cfg.mlp_ratio, cfg.text_window
            )
            if cfg.text_layers
            else None
        )
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.channels, 3, padding=1)

        widths, last = [cfg.channels * m for m in cfg.channel_mult], len(cfg.channel_mult) - 1
        self.down, skips, c = nn.ModuleList(), [cfg.channels], cfg.channels
        for level, width in enumerate(widths):
            for _ in range(cfg.blocks_per_level):
                self.down.append(UNetBlock(c, width, emb_dim, cfg, cfg.attends(level)))
                c = width
                skips.append(c)
            if level < last:
                self.down.append(Downsample(c))
                skips.append(c)
        self.mid = nn.ModuleList(
            [UNetBlock(c, c, emb_dim, cfg, cfg.mid_attention), UNetBlock(c, c, emb_dim, cfg, False)]
        )
        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for _ in range(cfg.blocks_per_level + 1):  # one more block: it takes the level's input skip
                self.up.append(UNetBlock(c + skips.pop(), widths[level], emb_dim, cfg, cfg.attends(level)))
                c = widths[level]
            if level > 0:
                self.up.append(Upsample(c))
        self.norm_out = group_norm(c)
        self.conv_out = zero_init(nn.Conv2d(c, cfg.in_channels, 3, padding=1))

    def forward(self, x_in: Tensor, c_noise: Tensor | float, cond: Conditioning | None = None) -> Tensor:
        """The raw output for noisy input x_in [B, C, H, W] at noise input c_noise [B]."""
        batch = check_image(x_in, self.config.in_channels, self.config.downsampling, "UNet")
        tokens, mask, pooled = unpack_conditioning(cond, batch, self.config.text_dim, "UNet")
        if tokens is not None and self.text_refiner is not None:
            tokens = self.text_refiner(tokens, mask)  # [B, L, D]
        emb = self.embed_mlp(self.noise_embed(noise_vector(c_noise, batch, x_in)))  # [B, E]
        if pooled is not None:
            emb = emb + self.pooled_proj(pooled)
        emb = F.silu(emb)  # every block's modulation starts with SiLU: apply it once
        if self.nhwc_on_cpu and uses_onednn(x_in):
            x_in = x_in.contiguous(memory_format=torch.channels_last)

        h = self.conv_in(x_in)
        skips = [h]
        for block in self.down:
            h = block(h, emb, tokens, mask) if isinstance(block, UNetBlock) else block(h)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb, tokens, mask)
        for block in self.up:
            if isinstance(block, UNetBlock):
                h = block(torch.cat([h, skips.pop()], dim=1), emb, tokens, mask)
            else:
                h = block(h)
        return self.conv_out(F.silu(self.norm_out(h))).contiguous()  # [B, C, H, W], NCHW again

    def num_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def flops_per_image(self, text_len: int = 32, image_size: int | None = None) -> int:
        """Forward FLOPs for one image (default: config.image_size) and a prompt padded to text_len tokens.

        Counts 2 × the multiply-adds of convolutions, linears and attention matmuls (see layers);
        the cross-attention terms assume a prompt is given (text_dim > 0).
        """
        size = self.config.image_size if image_size is None else image_size
        if size % self.config.downsampling:
            raise ValueError(f"image_size {size} is not divisible by {self.config.downsampling}")
        text_len = text_len if self.config.text_dim else 0
        total = sum(linear_flops(m, 1) for m in self.embed_mlp if isinstance(m, nn.Linear))
        total += linear_flops(self.pooled_proj, 1) if self.pooled_proj is not None else 0
        total += self.text_refiner.flops(text_len) if self.text_refiner is not None and text_len else 0
        total += conv_flops(self.conv_in, size, size)
        for block in self.down:
            total += block.flops(size, text_len) if isinstance(block, UNetBlock) else block.flops(size)
            size = size if isinstance(block, UNetBlock) else size // 2
        total += sum(block.flops(size, text_len) for block in self.mid)
        for block in self.up:
            total += block.flops(size, text_len) if isinstance(block, UNetBlock) else block.flops(size)
            size = size if isinstance(block, UNetBlock) else size * 2
        return total + conv_flops(self.conv_out, size, size)
