"""ControlNet (Zhang et al. 2023): a trainable copy of a U-Net's encoder and middle that reads a condition
image and adds features to the frozen U-Net's skips and middle through zero-initialised 1×1 convolutions.

A small convolutional "hint" encoder brings the map to the U-Net's input resolution and is added to the
copy's first feature map; its last convolution starts at zero too, so a fresh branch adds exactly 0.
``guidance.ControlWindow`` is the Denoiser side: it attaches the controls whose window holds σ to the
Conditioning (``ControlHint``), and ``UNet.forward`` runs them (``control_residuals``) and adds their
scaled outputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor, nn

from ..components import register_component
from ..conditioning import Conditioning
from .layers import conv_flops, zero_init
from .unet import UNet, UNetBlock, UNetConfig

Residuals = tuple[list[Tensor], Tensor]  # one tensor per U-Net skip, one for the middle's output


@dataclass
class ControlNetConfig(UNetConfig):
    """The U-Net's own config (the encoder it copies) plus the hint encoder's."""

    hint_channels: int = 3  # channels of the condition image
    hint_widths: tuple[int, ...] = (16, 32, 96, 256)  # SD's input_hint_block widths; one fewer stride-2 conv
    hint_stride: int = 2  # stride of each widening conv: 2 → map 8× the latent (SD), 1 → pixel models

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hint_channels < 1 or not self.hint_widths or min(self.hint_widths) < 1:
            raise ValueError("ControlNetConfig: hint_channels and hint_widths must be positive")
        if self.hint_stride not in (1, 2):
            raise ValueError(f"ControlNetConfig: hint_stride must be 1 or 2, got {self.hint_stride}")

    @property
    def hint_factor(self) -> int:
        """How many times larger than the U-Net's input the condition image is."""
        return self.hint_stride ** (len(self.hint_widths) - 1)


def hint_encoder(config: ControlNetConfig) -> nn.Sequential:
    """conv, SiLU, (conv, SiLU, strided widening conv, SiLU)…, zero conv: SD's ``input_hint_block``
    layer by layer, so its indices are the original file's."""
    w, act = config.hint_widths, nn.SiLU
    layers: list[nn.Module] = [nn.Conv2d(config.hint_channels, w[0], 3, padding=1), act()]
    for a, b in zip(w, w[1:]):
        layers += [nn.Conv2d(a, a, 3, padding=1), act()]
        layers += [nn.Conv2d(a, b, 3, padding=1, stride=config.hint_stride), act()]
    layers.append(zero_init(nn.Conv2d(w[-1], config.channels, 3, padding=1)))
    return nn.Sequential(*layers)


@register_component("controlnet")
class ControlNet(UNet):
    """forward(x_in [B, C, H, W], c_noise [B], cond, hint [1|B, hint_channels, fH, fW] in [0, 1]) →
    (residual per U-Net skip, residual for the middle), all zero for a fresh branch."""

    config_class = ControlNetConfig

    def __init__(self, config: ControlNetConfig):
        nn.Module.__init__(self)
        self.config = config
        skips = self._build_encoder(config)  # the U-Net's names: its weights load as they are
        self.hint = hint_encoder(config)
        self.zero_convs = nn.ModuleList(zero_init(nn.Conv2d(c, c, 1)) for c in skips)
        self.mid_out = zero_init(nn.Conv2d(skips[-1], skips[-1], 1))

    @classmethod
    def from_unet(cls, unet: UNet, **hint: object) -> ControlNet:
        """A branch whose encoder starts as a copy of ``unet``'s (the paper's initialisation)."""
        branch = cls(ControlNetConfig(**asdict(unet.config), **hint))
        own = branch.state_dict()
        copied = {k: v for k, v in unet.state_dict().items() if k in own}
        branch.load_state_dict(copied, strict=False)
        return branch.to(next(unet.parameters()).dtype)

    def forward(  # type: ignore[override]
        self, x_in: Tensor, c_noise: Tensor | float, cond: Conditioning | None, hint: Tensor
    ) -> Residuals:
        x, emb, tokens, mask = self.prepare(x_in, c_noise, cond)
        factor, (height, width) = self.config.hint_factor, x.shape[-2:]
        if hint.ndim != 4 or tuple(hint.shape[1:]) != (
            self.config.hint_channels,
            factor * height,
            factor * width,
        ):
            raise ValueError(
                f"ControlNet: the map must be [B, {self.config.hint_channels}, {factor * height}, "
                f"{factor * width}] for this input, got {list(hint.shape)}"
            )
        hint = hint.to(x).expand(x.shape[0], -1, -1, -1)
        h, skips = self.encode(self.conv_in(x) + self.hint(hint), emb, tokens, mask)
        return [z(s) for z, s in zip(self.zero_convs, skips)], self.mid_out(h)

    def flops_per_image(self, text_len: int = 32, image_size: int | None = None) -> int:
        """Forward FLOPs of the branch for one image (encoder, middle, hint encoder, zero convs)."""
        size = self.config.image_size if image_size is None else image_size
        text_len = text_len if self.config.text_dim else 0
        total, s = conv_flops(self.conv_in, size, size), size
        for block, zero in zip(self.down, self.zero_convs[1:]):
            is_block = isinstance(block, UNetBlock)
            total += block.flops(s, text_len) if is_block else block.flops(s)
            s = s if is_block else s // 2
            total += conv_flops(zero, s, s)
        total += sum(block.flops(s, text_len) for block in self.mid) + conv_flops(self.mid_out, s, s)
        total += conv_flops(self.zero_convs[0], size, size)
        big = size * self.config.hint_factor
        for layer in self.hint:
            if isinstance(layer, nn.Conv2d):
                big //= layer.stride[0]
                total += conv_flops(layer, big, big)
        return total


def control_residuals(cond: Conditioning, x_in: Tensor, c_noise: Tensor | float) -> Residuals:
    """Σ scale · branch(x_in, c_noise, cond, map) over the controls ``cond.control`` names (several
    ControlNets are summed, as diffusers' MultiControlNetModel does)."""
    plain = cond.with_control(())
    total: Residuals | None = None
    for hint in cond.control:
        skips, mid = hint.branch(x_in, c_noise, plain, hint.image)
        scale = hint.scale
        if isinstance(scale, Tensor):
            scale = scale.to(mid).reshape(-1, 1, 1, 1)  # [B, 1, 1, 1]
        skips, mid = [s * scale for s in skips], mid * scale
        total = (skips, mid) if total is None else ([a + b for a, b in zip(total[0], skips)], total[1] + mid)
    assert total is not None
    return total
