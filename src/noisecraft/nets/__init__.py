"""Networks: ``Net(x_in [B, C, H, W], c_noise [B], cond) -> raw [B, C, H, W]``, saved as components."""

from .dit import DiT, DiTConfig
from .layers import Attention, FeedForward, NoiseEmbedding, TransformerBlock
from .mlp import MLP, MLPConfig
from .unet import UNet, UNetConfig

__all__ = [
    "Attention",
    "DiT",
    "DiTConfig",
    "FeedForward",
    "MLP",
    "MLPConfig",
    "NoiseEmbedding",
    "TransformerBlock",
    "UNet",
    "UNetConfig",
]
