"""Networks: ``Net(x_in [B, C, H, W], c_noise [B], cond) -> raw [B, C, H, W]``, saved as components;
and the latent-diffusion autoencoder (``AutoencoderKL``: encode / decode)."""

from .autoencoder import AutoencoderConfig, AutoencoderKL
from .dit import DiT, DiTConfig
from .layers import Attention, FeedForward, NoiseEmbedding, TransformerBlock
from .mlp import MLP, MLPConfig
from .unet import UNet, UNetConfig
from .wave_unet import WaveUNet, WaveUNetConfig

__all__ = [
    "Attention",
    "AutoencoderConfig",
    "AutoencoderKL",
    "DiT",
    "DiTConfig",
    "FeedForward",
    "MLP",
    "MLPConfig",
    "NoiseEmbedding",
    "TransformerBlock",
    "UNet",
    "UNetConfig",
    "WaveUNet",
    "WaveUNetConfig",
]
