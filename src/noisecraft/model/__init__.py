"""The model layer, below both ``pipeline`` and ``training``: a saved model's settings, model folders
and the shipped registry, the latent space, the checked options of a sampling request, and the one
sampling function every caller uses.

    cli, server → pipeline → model → {samplers, guidance, denoisers, nets, text} → schedules
    training → model, {losses, nets, data}
"""

from .control import ControlSpec, build_controls, load_control_branch, own_control
from .folder import (
    SETTINGS_FILE,
    SHIPPED_DIR,
    ModelParts,
    find_model,
    find_weights,
    load_model,
    load_parts,
    read_settings,
    shipped_models,
    write_settings,
)
from .latent import LatentSpace
from .options import OptionError, SamplingOptions
from .sampling import encode_prompts, sample
from .settings import MAX_IMAGES, ModelSettings, build_denoiser

__all__ = [
    "ControlSpec",
    "MAX_IMAGES",
    "build_controls",
    "load_control_branch",
    "own_control",
    "SETTINGS_FILE",
    "SHIPPED_DIR",
    "LatentSpace",
    "ModelParts",
    "ModelSettings",
    "OptionError",
    "SamplingOptions",
    "build_denoiser",
    "encode_prompts",
    "find_model",
    "find_weights",
    "load_model",
    "load_parts",
    "read_settings",
    "sample",
    "shipped_models",
    "write_settings",
]
