"""A saved model's settings: the σ range and preconditioning it was trained with, what it makes, and
the defaults of a sampling request. Stored as ``pipeline.json`` in a model folder."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from torch import nn

from ..audio import SpectrogramFormat
from ..components import config_from_dict
from ..denoisers import PRECONDITIONINGS, Denoiser, precondition
from ..schedules import vp_alphas_cumprod
from .upscale import check_factor

# The range of every numeric setting and sampling option (inclusive; a (0, hi] range is written with
# lo = 0 and checked as positive). A hand-edited or hostile file or flag gets one line naming the value,
# not hours of work, a MemoryError or an image of NaNs.
MAX_STEPS = 10_000
MAX_SIDE = 16_384  # pixels per image side
MAX_SIGMA = 1e6  # a cosine VP table reaches σ ≈ 2·10⁴
MAX_GUIDANCE = 1_000.0
MAX_IMAGES = 10_000  # images in one request (prompts × images per prompt)
BOUNDS: dict[str, tuple[float, float]] = {
    "steps": (1, MAX_STEPS),
    "image_size": (1, MAX_SIDE),
    "width": (1, MAX_SIDE),
    "height": (1, MAX_SIDE),
    "num_train_timesteps": (1, 100_000),
    "sigma_data": (0, MAX_SIGMA),
    "sigma_min": (0, MAX_SIGMA),
    "sigma_max": (0, MAX_SIGMA),
    "rho": (0, 1_000),
    "guidance": (-MAX_GUIDANCE, MAX_GUIDANCE),
    "latent_scale": (0, 1e6),
}


def check_bounds(name: str, value: float) -> None:
    """ValueError when ``value`` of setting/option ``name`` lies outside ``BOUNDS[name]``."""
    lo, hi = BOUNDS[name]
    if lo == 0 and not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo:g}, {hi:g}], got {value!r}")


@dataclass
class ModelSettings:
    """How to turn the network's output into images, and the defaults of every sampling request."""

    name: str = "custom"
    image_size: int = 32  # pixels per side of the images it makes
    channels: int = 3  # image channels: 1 (grey) or 3 (RGB)
    precond: str = "edm"  # one of denoisers.PRECONDITIONINGS
    sigma_data: float = 0.5
    beta_schedule: str = "linear"  # vp_* only: the training ᾱ table
    num_train_timesteps: int = 1000
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    schedule: str = "karras"  # σ spacing of sampling (model.schedule.SCHEDULES)
    steps: int = 20
    sampler: str = "dpmpp_2m"
    guidance: float = 4.0
    latent_scale: float = 1.0  # latent models (an autoencoder/ folder): latents × this are sampled
    zero_empty_negative: bool = False  # guidance's empty negative prompt is zero embeddings (SDXL)
    # Sound models: the images are log-mel spectrograms in this format (noisecraft.audio); None: pictures.
    audio: SpectrogramFormat | None = None
    # Upscalers (model/upscale.py): the side of the pictures it enlarges, made by the model in base/; 0: none.
    upscale_from: int = 0

    def __post_init__(self) -> None:
        _check_field_types(self)
        if self.audio is not None:
            self.audio = _spectrogram_format(self.audio, self.channels, self.image_size)
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if self.precond not in PRECONDITIONINGS:
            raise ValueError(f"unknown precond {self.precond!r}; valid: {', '.join(PRECONDITIONINGS)}")
        if self.upscale_from:
            check_factor(self.image_size, self.upscale_from)
        if not self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")

    def denoiser(self, net: nn.Module) -> Denoiser:
        """``net`` wrapped in the preconditioning these settings name."""
        return build_denoiser(
            net, self.precond, self.sigma_data, self.beta_schedule, self.num_train_timesteps
        )

    @property
    def modality(self) -> str:
        """What the model makes: "audio" (spectrograms heard as sound) or "image"."""
        return "image" if self.audio is None else "audio"

    def as_dict(self) -> dict:
        """The fields as ``pipeline.json`` holds them (no ``audio`` entry for a picture model)."""
        values = dataclasses.asdict(self)
        for key in ("audio", "upscale_from"):  # absent for the models that have none
            if not values[key]:
                del values[key]
        return values

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the model makes by default."""
        return self.channels, self.image_size, self.image_size

    @property
    def width(self) -> int:  # the default of SamplingOptions.width
        return self.image_size

    @property
    def height(self) -> int:
        return self.image_size


def _check_field_types(settings: ModelSettings) -> None:
    """ValueError naming the first field of a (hand-edited) pipeline.json of the wrong type or range."""
    for field in dataclasses.fields(settings):
        value, kind = getattr(settings, field.name), type(field.default)
        least = 0 if field.name == "upscale_from" else 1  # 0: not an upscaler
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            what = "a positive integer" if least else "an integer >= 0"
            raise ValueError(f"{field.name} must be {what}, got {value!r}")
        if kind is float and (
            isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
        ):
            raise ValueError(f"{field.name} must be a finite number, got {value!r}")
        if kind is bool and not isinstance(value, bool):
            raise ValueError(f"{field.name} must be true or false, got {value!r}")
        if kind is str and not isinstance(value, str):
            raise ValueError(f"{field.name} must be a string, got {value!r}")
        if field.name in BOUNDS:
            check_bounds(field.name, value)


def _spectrogram_format(value: object, channels: int, image_size: int) -> SpectrogramFormat:
    """The ``audio`` field (a format, or its JSON object) checked against the images the model makes."""
    if isinstance(value, dict):
        value = config_from_dict(SpectrogramFormat, value)
    if not isinstance(value, SpectrogramFormat):
        raise ValueError(f"audio must be an object of spectrogram settings, got {value!r}")
    if channels != 1 or image_size != value.n_mels:
        raise ValueError(
            f"a sound model makes 1-channel spectrograms with {value.n_mels} mel bands as rows, "
            f"not {channels}-channel {image_size}-pixel images"
        )
    return value


def build_denoiser(
    net: nn.Module, precond: str, sigma_data: float, beta_schedule: str, num_train_timesteps: int
) -> Denoiser:
    """The raw network wrapped in its preconditioning (Karras et al. 2022, Table 1); ``vp_*`` kinds
    get the ᾱ table they were trained on."""
    alphas = vp_alphas_cumprod(beta_schedule, num_train_timesteps) if precond.startswith("vp_") else None
    return precondition(net, precond, sigma_data, alphas)
