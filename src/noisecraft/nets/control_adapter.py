"""A control adapter in the style of T2I-Adapter (Mou et al. 2023): a small convolutional pyramid that
reads only the condition image, so its features are computed once per generation, not once per step.

Where a ControlNet (nets/control.py) runs a copy of the U-Net's encoder on the noisy input at every
step, the adapter sees the map alone: one stage per U-Net resolution (a strided convolution, then
residual convolution blocks), and for each of the U-Net's skips (and its middle) a zero-initialised
1×1 convolution from the stage of that resolution to the skip's width. A fresh adapter adds exactly 0.
It answers the branch interface ``forward(x_in, c_noise, cond, hint) → (skips, middle)``, so every
control path (scales, σ windows, several controls, the CLI and the APIs) runs it unchanged; the
pyramid's outputs are kept between steps (``InferenceMemo``) while the map and weights are the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor, nn
from torch.nn import functional as F

from ..components import register_component
from ..conditioning import Conditioning
from .layers import InferenceMemo, conv_flops, zero_init
from .unet import UNet, UNetConfig

Residuals = tuple[list[Tensor], Tensor]


@dataclass
class ControlAdapterConfig(UNetConfig):
    """The U-Net's config (the skips it feeds) plus the pyramid's width and depth."""

    hint_channels: int = 3  # channels of the condition image (the U-Net's input size)
    adapter_width: int = 32  # channels of the first stage; each further stage doubles them
    adapter_blocks: int = 1  # residual blocks per stage

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.hint_channels, self.adapter_width, self.adapter_blocks) < 1:
            raise ValueError("ControlAdapterConfig: hint_channels, adapter_width, adapter_blocks must be ≥ 1")

    @property
    def hint_factor(self) -> int:
        """The map is the U-Net's input size (as a pixel model's ControlNet with stride 1)."""
        return 1


class _Residual(nn.Module):
    """x + conv(SiLU(conv(x))): T2I-Adapter's ResnetBlock without normalisation."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(width, width, 3, padding=1), nn.Conv2d(width, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.silu(self.conv1(x)))


def skip_levels(config: UNetConfig) -> list[tuple[int, int]]:
    """(width, resolution level) of every skip of a U-Net with ``config``, in UNet.encode's order."""
    widths, last = [config.channels * m for m in config.channel_mult], len(config.channel_mult) - 1
    out, c = [(config.channels, 0)], config.channels
    for level, width in enumerate(widths):
        out += [(width, level)] * config.blocks_per_level
        c = width
        if level < last:
            out.append((c, level + 1))  # the Downsample's output: this width at the next resolution
    return out


@register_component("control_adapter")
class ControlAdapter(nn.Module):
    """forward(x_in [B, C, H, W], c_noise, cond, hint [1|B, hint_channels, H, W] in [0, 1]) → (a residual
    per U-Net skip, one for the middle), all zero for a fresh adapter; x_in gives only the batch size."""

    config_class = ControlAdapterConfig

    def __init__(self, config: ControlAdapterConfig):
        super().__init__()
        self.config = config
        levels = len(config.channel_mult)
        widths = [config.adapter_width * 2**k for k in range(levels)]
        self.stages = nn.ModuleList()
        for k, width in enumerate(widths):
            entry = (
                nn.Conv2d(config.hint_channels, width, 3, padding=1)
                if k == 0
                else nn.Conv2d(widths[k - 1], width, 3, padding=1, stride=2)
            )
            self.stages.append(
                nn.Sequential(entry, *(_Residual(width) for _ in range(config.adapter_blocks)))
            )
        self.levels = [level for _, level in skip_levels(config)]
        self.zero_convs = nn.ModuleList(
            zero_init(nn.Conv2d(widths[level], width, 1)) for width, level in skip_levels(config)
        )
        mid = config.channels * config.channel_mult[-1]
        self.mid_out = zero_init(nn.Conv2d(widths[-1], mid, 1))
        self.memos = [InferenceMemo(4) for _ in widths]  # the pyramid, once per map

    @classmethod
    def from_unet(cls, unet: UNet, **options: object) -> ControlAdapter:
        """A fresh adapter for ``unet``'s skips."""
        adapter = cls(ControlAdapterConfig(**asdict(unet.config), **options))
        return adapter.to(next(unet.parameters()).dtype)

    def pyramid(self, hint: Tensor) -> list[Tensor]:
        """The stages' features of the map [B, hint_channels, H, W], one per U-Net resolution."""
        features, x = [], hint
        for stage, memo in zip(self.stages, self.memos):
            x = memo(self, (hint,), lambda stage=stage, x=x: stage(x))  # keyed by the map and all weights
            features.append(x)
        return features

    def forward(
        self, x_in: Tensor, c_noise: Tensor | float, cond: Conditioning | None, hint: Tensor
    ) -> Residuals:
        height, width = x_in.shape[-2:]
        if hint.ndim != 4 or tuple(hint.shape[1:]) != (self.config.hint_channels, height, width):
            raise ValueError(
                f"ControlAdapter: the map must be [B, {self.config.hint_channels}, {height}, {width}] "
                f"for this input, got {list(hint.shape)}"
            )
        features = self.pyramid(hint.to(x_in))
        batch = x_in.shape[0]
        skips = [
            z(features[level]).expand(batch, -1, -1, -1) for z, level in zip(self.zero_convs, self.levels)
        ]
        return skips, self.mid_out(features[-1]).expand(batch, -1, -1, -1)

    def flops_per_image(self, text_len: int = 32, image_size: int | None = None) -> int:
        """Forward FLOPs for one image: the pyramid (once per generation) plus the 1×1 convolutions."""
        size = self.config.image_size if image_size is None else image_size
        total, s = 0, size
        for k, stage in enumerate(self.stages):
            s = s if k == 0 else s // 2
            total += sum(conv_flops(m, s, s) for m in stage.modules() if isinstance(m, nn.Conv2d))
        for zero, level in zip(self.zero_convs, self.levels):
            total += conv_flops(zero, size >> level, size >> level)
        return total + conv_flops(self.mid_out, s, s)
