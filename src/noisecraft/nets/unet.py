"""A text-conditioned U-Net: ADM residual blocks (Dhariwal & Nichol 2021) + LDM transformers (Rombach 2022).

Read top to bottom: the noise level c_noise and the pooled prompt make one embedding vector that
modulates every residual block (scale-shift); the per-token prompt enters through cross-attention
in the transformer blocks at the chosen resolutions; the decoder concatenates the encoder's skips.
The output convolution, each residual block's last convolution and each transformer's output
projection start at zero (ADM), so a fresh network outputs exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..components import register_component
from ..conditioning import Conditioning
from .kernels import channels_last_for
from .layers import (
    FEED_FORWARDS,
    NOISE_EMBEDDINGS,
    NoiseEmbedding,
    PaddedConv2d,
    TokenLinear,
    TransformerBlock,
    add_residual,
    check_image,
    check_row_padding,
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
from .unet_text import MicroConditioning, TextLayout, TokenRefiner

if TYPE_CHECKING:
    from .feature_cache import FeatureCache


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
    row_padding: str = "zeros"  # "circular": convolutions wrap rows around (a spectrogram's frequency axis)
    query_positions: bool = False  # the attention positions reach the cross-attention's queries only
    text_layout: bool = False  # transformers add a map read from the prompt alone (TextLayout; zero at init)
    dropout: float = 0.0
    text_dim: int = 0  # width D of the text encoder's tokens; 0 → an unconditional-only net
    text_layers: int = 0  # trainable transformer layers over the (frozen) encoder's tokens; see TokenRefiner
    text_width: int = 128  # their width (a bottleneck: cheap beside the U-Net)
    text_window: int = 0  # odd: the refiner first adds each token's neighbours (zero at init); 0 = off
    noise_embedding: str = "positional"  # see layers.NoiseEmbedding
    noise_scale: float = 1.0  # c_noise is multiplied by this before the embedding
    # Stable Diffusion's U-Net (Rombach et al. 2022) differs from the ADM-style default in these:
    out_channels: int = 0  # 0: as many as in_channels (SD's inpainting nets take 9, give 4)
    num_heads: tuple[int, ...] = ()  # attention heads per level (SD); empty: width / head_dim
    transformer_depth: tuple[int, ...] = ()  # transformer blocks per level; empty: one each
    embedding_mode: str = "scale_shift"  # how a residual block takes the embedding: scale_shift | add (SD)
    feed_forward: str = "gelu"  # the transformers' MLP: gelu (tanh GELU) | geglu (SD)
    qkv_bias: bool = True  # SD's attention q/k/v projections have no bias
    norm_groups: int = 0  # GroupNorm groups; 0: min(32, C/4), as in EDM
    norm_eps: float = 1e-5
    transformer_norm_eps: float = 1e-5  # the GroupNorm before each transformer (SD: 1e-6)
    pooled_embedding: bool = True  # the pooled prompt joins the noise embedding (SD 1/2: it does not)
    # SDXL's micro-conditioning (Podell et al. 2023): the pooled prompt (pooled_dim wide) and the image's
    # size numbers, each in size_embedding sinusoidal features, through an MLP into the embedding.
    size_embedding: int = 0  # 0: off; SDXL: 256
    pooled_dim: int = 0  # width of the pooled prompt; 0: text_dim
    pixels_per_cell: int = 8  # image pixels per input cell (the autoencoder's factor), for the size ids

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
        self._check_sd_options()
        for level, mult in enumerate(self.channel_mult):
            attends = self.attends(level) or (self.mid_attention and level == len(self.channel_mult) - 1)
            width = self.channels * mult
            if attends and (width % self.num_heads[level] if self.num_heads else width % self.head_dim):
                raise ValueError(f"UNetConfig: width {width} does not split into heads (head_dim, num_heads)")
        if self.noise_embedding not in NOISE_EMBEDDINGS:
            raise ValueError(f"UNetConfig: noise_embedding must be one of {NOISE_EMBEDDINGS}")
        check_row_padding(self.row_padding, "UNetConfig")
        if self.text_dim < 0 or not 0 <= self.dropout < 1:
            raise ValueError("UNetConfig: text_dim must be ≥ 0 and dropout in [0, 1)")
        if self.text_layout and not self.text_dim:
            raise ValueError("UNetConfig: text_layout needs text_dim > 0")
        if self.query_positions and not (self.attention_positions and self.text_dim):
            raise ValueError("UNetConfig: query_positions needs attention_positions and text_dim > 0")
        refiner_fits = self.text_dim > 0 and self.text_width > 0 and self.text_width % self.head_dim == 0
        if self.text_layers < 0 or (self.text_layers and not refiner_fits):
            raise ValueError(
                "UNetConfig: text_layers must be ≥ 0 and need text_dim > 0, text_width a multiple of head_dim"
            )
        if self.text_window < 0 or (self.text_window and (self.text_window % 2 == 0 or not self.text_layers)):
            raise ValueError("UNetConfig: text_window must be 0 or an odd width, and needs text_layers > 0")

    def _check_sd_options(self) -> None:
        levels = len(self.channel_mult)
        for name in ("num_heads", "transformer_depth"):
            values = getattr(self, name)
            if values and (len(values) != levels or min(values) < 1):
                raise ValueError(
                    f"UNetConfig: {name} needs one positive count per level ({levels}), got {values}"
                )
        if self.embedding_mode not in ("scale_shift", "add"):
            raise ValueError(
                f"UNetConfig: embedding_mode must be scale_shift or add, got {self.embedding_mode!r}"
            )
        if self.feed_forward not in FEED_FORWARDS:
            raise ValueError(f"UNetConfig: feed_forward must be one of {sorted(FEED_FORWARDS)}")
        if self.size_embedding and (self.size_embedding % 2 or not self.text_dim or self.pooled_embedding):
            raise ValueError("UNetConfig: size_embedding must be even, with text_dim and no pooled_embedding")
        if (
            min(self.out_channels, self.pooled_dim) < 0
            or self.pixels_per_cell < 1
            or self.norm_groups < 0
            or min(self.norm_eps, self.transformer_norm_eps) <= 0
        ):
            raise ValueError(
                "UNetConfig: out_channels, pooled_dim and norm_groups must be ≥ 0, pixels_per_cell and "
                "the norm epsilons positive"
            )

    @property
    def pooled_width(self) -> int:
        """Width of the pooled prompt vector the network takes."""
        return self.pooled_dim or self.text_dim

    @property
    def outputs(self) -> int:
        """Channels of the output."""
        return self.out_channels or self.in_channels

    def head_dim_at(self, level: int) -> int:
        """Width of one attention head at ``level``."""
        width = self.channels * self.channel_mult[level]
        return width // self.num_heads[level] if self.num_heads else self.head_dim

    def depth_at(self, level: int) -> int:
        """Transformer blocks in each transformer of ``level``."""
        return self.transformer_depth[level] if self.transformer_depth else 1

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

    def __init__(self, c_in: int, c_out: int, emb_dim: int, config: UNetConfig):
        super().__init__()
        groups, eps = config.norm_groups, config.norm_eps
        rows = config.row_padding
        self.norm1, self.conv1 = group_norm(c_in, groups, eps), PaddedConv2d(c_in, c_out, row_padding=rows)
        self.scale_shift = config.embedding_mode == "scale_shift"  # else added (LDM / SD)
        self.emb = nn.Linear(emb_dim, 2 * c_out if self.scale_shift else c_out)
        self.norm2, self.dropout = group_norm(c_out, groups, eps), nn.Dropout(config.dropout)
        self.conv2 = zero_init(PaddedConv2d(c_out, c_out, row_padding=rows))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x [B, c_in, H, W], emb [B, E] (already through SiLU) → [B, c_out, H, W]."""
        h = self.conv1(F.silu(self.norm1(x)))
        if self.scale_shift:
            scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # [B, c_out, 1, 1] each
            h = modulate(self.norm2(h), shift, scale)
        else:
            h = self.norm2(h + self.emb(emb)[:, :, None, None])
        h = self.conv2(self.dropout(F.silu(h)))
        return add_residual(h, x if self.skip is None else self.skip(x))  # h: conv2's fresh output

    def flops(self, size: int) -> int:
        total = conv_flops(self.conv1, size, size) + conv_flops(self.conv2, size, size)
        total += linear_flops(self.emb, 1)
        return total + (conv_flops(self.skip, size, size) if self.skip is not None else 0)


class SpatialTransformer(nn.Module):
    """Feature map → tokens → TransformerBlock → feature map, added as a zero-initialised residual."""

    def __init__(self, channels: int, config: UNetConfig, level: int):
        super().__init__()
        norm = group_norm(channels, config.norm_groups, config.transformer_norm_eps)
        self.norm, self.proj_in = norm, TokenLinear(channels, channels)
        # Where each token sits, said outright instead of left to the convolutions' zero padding; zero
        # at first, so a trained net can grow it (model.init_new).
        self.pos_proj = zero_init(TokenLinear(channels, channels)) if config.attention_positions else None
        self.query_positions = config.query_positions  # else they join the tokens themselves
        self.layout = TextLayout(channels, config.head_dim, config.text_dim) if config.text_layout else None
        blocks = [
            TransformerBlock(
                channels,
                config.head_dim_at(level),
                config.text_dim,
                config.mlp_ratio,
                config.dropout,
                config.feed_forward,
                config.qkv_bias,
            )  # fmt: skip
            for _ in range(config.depth_at(level))
        ]
        self.block, self.more_blocks = blocks[0], nn.ModuleList(blocks[1:])  # SDXL: up to 10 deep
        self.proj_out = zero_init(TokenLinear(channels, channels))

    def forward(self, x: Tensor, tokens: Tensor | None, mask: Tensor | None) -> Tensor:
        b, c, height, width = x.shape
        h = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))  # [B, HW, C]; a view if channels_last
        where = None if self.pos_proj is None else self.pos_proj(sincos_positions(height, width, c, h))
        if where is not None and not self.query_positions:
            h, where = h + where, None  # [HW, C] broadcast over B
        if self.layout is not None and tokens is not None:
            h = h + self.layout(tokens, mask, height, width)  # [B, HW, C]
        for block in [self.block, *self.more_blocks]:
            h = block(h, tokens, mask, where)
        h = self.proj_out(h)  # [B, HW, C]
        return x + h.transpose(1, 2).unflatten(2, (height, width))  # a view in either layout: no copy

    def flops(self, size: int, text_len: int) -> int:
        n = size * size
        total = linear_flops(self.proj_in, n) + linear_flops(self.proj_out, n)
        total += sum(block.flops(n, text_len) for block in [self.block, *self.more_blocks])
        total += linear_flops(self.pos_proj, n) if self.pos_proj is not None else 0
        return total + (self.layout.flops(size, text_len) if self.layout is not None else 0)


class UNetBlock(nn.Module):
    """One step of a level: a residual block, then (at attention resolutions) a transformer."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, config: UNetConfig, attention: bool, level: int):
        super().__init__()
        self.res = ResBlock(c_in, c_out, emb_dim, config)
        self.attn = SpatialTransformer(c_out, config, level) if attention else None

    def forward(self, x: Tensor, emb: Tensor, tokens: Tensor | None, mask: Tensor | None) -> Tensor:
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x, tokens, mask)

    def flops(self, size: int, text_len: int) -> int:
        return self.res.flops(size) + (self.attn.flops(size, text_len) if self.attn is not None else 0)


class Downsample(PaddedConv2d):
    """Halve the resolution with a stride-2 3×3 convolution."""

    def __init__(self, channels: int, row_padding: str = "zeros"):
        super().__init__(channels, channels, 3, stride=2, row_padding=row_padding)

    def flops(self, size: int) -> int:  # size: the input resolution
        return conv_flops(self, size // 2, size // 2)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour then a 3×3 convolution."""

    def __init__(self, channels: int, row_padding: str = "zeros"):
        super().__init__()
        self.conv = PaddedConv2d(channels, channels, row_padding=row_padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

    def flops(self, size: int) -> int:  # size: the input resolution
        return conv_flops(self.conv, 2 * size, 2 * size)


@register_component("unet")
class UNet(nn.Module):
    """Text-conditioned U-Net: forward(x_in [B, C, H, W], c_noise [B], cond) → raw [B, C, H, W]."""

    config_class = UNetConfig
    # NHWC activations on CPU where kernels.py's table (or the user) says so for this ISA and size:
    # oneDNN's convolutions and TokenLinear's can run faster on them, and the transformers' tokens are
    # then a view of the feature map (benchmarks/unet_variants.py). True / False force a layout.
    nhwc_on_cpu: bool | None = None
    feature_cache: FeatureCache | None = None  # set while sampling with deep_cache (feature_cache.py)

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        skips = self._build_encoder(config)
        self._build_decoder(config, skips)

    def _build_encoder(self, cfg: UNetConfig) -> list[int]:
        """The embeddings, conv_in, the down path and the middle (a control branch copies these);
        returns the width of every skip."""
        emb_dim = 4 * cfg.channels
        self.noise_embed = NoiseEmbedding(cfg.channels, cfg.noise_embedding, cfg.noise_scale)
        self.embed_mlp = nn.Sequential(
            nn.Linear(cfg.channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.pooled_proj = nn.Linear(cfg.text_dim, emb_dim) if cfg.text_dim and cfg.pooled_embedding else None
        self.micro = (
            MicroConditioning(cfg.pooled_width, cfg.size_embedding, emb_dim, cfg.pixels_per_cell)
            if cfg.size_embedding
            else None
        )
        self.text_refiner = (
            TokenRefiner(
                cfg.text_dim, cfg.text_width, cfg.text_layers, cfg.head_dim, cfg.mlp_ratio, cfg.text_window
            )
            if cfg.text_layers
            else None
        )
        self.conv_in = PaddedConv2d(cfg.in_channels, cfg.channels, row_padding=cfg.row_padding)

        widths, last = [cfg.channels * m for m in cfg.channel_mult], len(cfg.channel_mult) - 1
        self.down, skips, c = nn.ModuleList(), [cfg.channels], cfg.channels
        for level, width in enumerate(widths):
            for _ in range(cfg.blocks_per_level):
                self.down.append(UNetBlock(c, width, emb_dim, cfg, cfg.attends(level), level))
                c = width
                skips.append(c)
            if level < last:
                self.down.append(Downsample(c, cfg.row_padding))
                skips.append(c)
        self.mid = nn.ModuleList(
            [
                UNetBlock(c, c, emb_dim, cfg, cfg.mid_attention, last),
                UNetBlock(c, c, emb_dim, cfg, False, last),
            ]
        )
        return skips

    def _build_decoder(self, cfg: UNetConfig, skips: list[int]) -> None:
        emb_dim, widths = 4 * cfg.channels, [cfg.channels * m for m in cfg.channel_mult]
        self.up, c = nn.ModuleList(), widths[-1]
        for level in reversed(range(len(widths))):
            for _ in range(cfg.blocks_per_level + 1):  # one more block: it takes the level's input skip
                self.up.append(
                    UNetBlock(c + skips.pop(), widths[level], emb_dim, cfg, cfg.attends(level), level)
                )
                c = widths[level]
            if level > 0:
                self.up.append(Upsample(c, cfg.row_padding))
        self.norm_out = group_norm(c, cfg.norm_groups, cfg.norm_eps)
        self.conv_out = zero_init(PaddedConv2d(c, cfg.outputs, row_padding=cfg.row_padding))

    def prepare(
        self, x_in: Tensor, c_noise: Tensor | float, cond: Conditioning | None
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """(input [B, in_channels, H, W], embedding [B, E] after SiLU, tokens [B, L, D], mask [B, L])."""
        if cond is not None and cond.image is not None:  # an inpainting net's mask and masked-image latents
            x_in = torch.cat([x_in, cond.image.to(x_in)], dim=1)  # [B, in_channels, H, W]
        batch = check_image(x_in, self.config.in_channels, self.config.downsampling, type(self).__name__)
        tokens, mask, pooled = unpack_conditioning(
            cond, batch, self.config.text_dim, type(self).__name__, self.config.pooled_width
        )
        if tokens is not None and self.text_refiner is not None:
            tokens = self.text_refiner(tokens, mask)  # [B, L, D]
        emb = self.embed_mlp(self.noise_embed(noise_vector(c_noise, batch, x_in)))  # [B, E]
        if pooled is not None and self.pooled_proj is not None:
            emb = emb + self.pooled_proj(pooled)
        if pooled is not None and self.micro is not None:
            emb = emb + self.micro(pooled, x_in.shape[-2], x_in.shape[-1])
        emb = F.silu(emb)  # every block's modulation starts with SiLU: apply it once
        nhwc = channels_last_for(self.config.channels) if self.nhwc_on_cpu is None else self.nhwc_on_cpu
        if nhwc and uses_onednn(x_in):
            x_in = x_in.contiguous(memory_format=torch.channels_last)
        return x_in, emb, tokens, mask

    def encode(
        self, h: Tensor, emb: Tensor, tokens: Tensor | None, mask: Tensor | None, depth: int | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """conv_in's output h through the down path and the middle: (middle output, skips); with
        ``depth``, through the first ``depth`` down blocks only (no middle)."""
        skips = [h]
        for block in self.down[:depth]:
            h = block(h, emb, tokens, mask) if isinstance(block, UNetBlock) else block(h)
            skips.append(h)
        for block in self.mid if depth is None else ():
            h = block(h, emb, tokens, mask)
        return h, skips

    def up_blocks(self) -> int:
        """The number of decoder blocks (each takes one skip)."""
        return sum(isinstance(block, UNetBlock) for block in self.up)

    def _shallow_start(self, branch: int) -> int:
        """The index in ``self.up`` of the ``branch``-th decoder block from the end."""
        blocks = [i for i, block in enumerate(self.up) if isinstance(block, UNetBlock)]
        return blocks[-branch]

    def forward(
        self,
        x_in: Tensor,
        c_noise: Tensor | float,
        cond: Conditioning | None = None,
        residuals: tuple[list[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """The raw output for noisy input x_in [B, C, H, W] at noise input c_noise [B].

        ``residuals`` (a control branch's: one per skip, and one for the middle) are added to the skips
        and the middle's output; without them, the controls ``cond.control`` names are run for them.
        """
        if residuals is None and cond is not None and cond.control:
            from .control import control_residuals  # the branch imports this module

            residuals = control_residuals(cond, x_in, c_noise)
        x_in, emb, tokens, mask = self.prepare(x_in, c_noise, cond)
        cache, start, deep = self.feature_cache, 0, None
        rows = None if tokens is None else tokens[..., :1]  # [B, L, 1]: tells the rows' prompts apart
        if cache is not None:
            slot, deep = cache.take(x_in, rows)
            start = self._shallow_start(cache.branch)
        if deep is None:
            h, skips = self.encode(self.conv_in(x_in), emb, tokens, mask)
        else:  # DeepCache: the deep features of the last full run, fresh shallow skips
            h, skips = deep, self.encode(self.conv_in(x_in), emb, tokens, mask, cache.branch - 1)[1]
        if residuals is not None:
            extra, mid = residuals
            extra = extra if deep is None else extra[: len(skips)]  # all, or the shallow path's
            skips = [s + r for s, r in zip(skips, extra, strict=True)]
            h = h if deep is not None else h + mid
        for i, block in enumerate(self.up):
            if deep is not None and i < start:
                continue
            if cache is not None and deep is None and i == start:
                cache.keep(slot, h, rows)
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
        total += self.micro.flops() if self.micro is not None else 0
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
