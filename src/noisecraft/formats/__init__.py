"""Other projects' weight layouts → noisecraft's modules: the only place foreign key names appear."""

from .vae import (
    first_stage_part,
    infer_vae_config,
    vae_config_from_diffusers,
    vae_from_diffusers,
    vae_from_original,
)

__all__ = [
    "first_stage_part",
    "infer_vae_config",
    "vae_config_from_diffusers",
    "vae_from_diffusers",
    "vae_from_original",
]
