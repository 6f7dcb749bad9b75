"""One sampling request's options, checked once: ``SamplingOptions``.

    options = SamplingOptions(steps=25, sampler="DPM++ 2M", guidance=5.0, seed=7)  # checked here
    options = options.resolve(settings)       # the model's defaults fill what was left None

The CLI, the Python API and both HTTP APIs build one of these; nothing downstream re-checks it. A new
option is a field here (with its check), the code where it acts, and its CLI flag / API field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..guidance import check_guidance_options
from ..nets.feature_cache import MAX_INTERVAL
from ..noise import check_seed, pick_seed
from ..samplers import SAMPLERS
from ..samplers.names import canonical_sampler
from .schedule import SCHEDULES, canonical_schedule
from .settings import ModelSettings, check_bounds


class OptionError(ValueError):
    """A sampling option out of range or of the wrong type; ``field`` names it (HTTP answers 422 on it)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# Fields left None take the model's value (ModelSettings has a field or property of the same name).
MODEL_DEFAULTS = ("steps", "sampler", "guidance", "schedule", "sigma_min", "sigma_max", "rho")
SIZE = ("width", "height")  # the model's native size (ModelSettings properties)


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample: None takes the model's default (``resolve``)."""

    steps: int | None = None
    sampler: str | None = None  # ours or an A1111 name; stored as ours
    guidance: float | None = None  # classifier-free guidance scale (1 = off)
    guidance_rescale: float = 0.0  # φ of guidance rescale (Lin et al. 2023), 0 = off
    guidance_interval: tuple[float, float] | None = None  # guide only where lo < σ ≤ hi (Kynkäänniemi 2024)
    sigma_min: float | None = None
    sigma_max: float | None = None
    schedule: str | None = None  # how σ is spaced: one of SCHEDULES (A1111's "Karras" too)
    rho: float | None = None  # Karras et al. 2022's schedule exponent
    width: int | None = None  # image size in pixels (the model's native size by default)
    height: int | None = None
    seed: int = 0  # image i of a request uses seed + i; -1 draws a random one (stored as drawn)
    strength: float = 0.6  # image-to-image: 0 keeps the init image, 1 ignores it (SDEdit)
    tile: bool | None = None  # latent models: autoencode in tiles (None: above 1024² pixels)
    deep_cache: int = 1  # U-Nets: run in full every N-th call, reuse deep features between (DeepCache)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None:
                try:
                    value = _CHECKS[field.name](value)
                except (TypeError, ValueError) as err:
                    raise OptionError(field.name, f"{field.name}: {err}") from None
                object.__setattr__(self, field.name, value)
        if self.sigma_min is not None and self.sigma_max is not None and self.sigma_min >= self.sigma_max:
            raise OptionError(
                "sigma_min", f"need sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}"
            )

    def resolve(self, settings: ModelSettings) -> SamplingOptions:
        """These options with every None replaced by the model's default (and checked again); a
        schedule with its own ρ (polyexponential: 1, as A1111) takes that rather than the model's."""
        filled = {k: getattr(settings, k) for k in MODEL_DEFAULTS + SIZE if getattr(self, k) is None}
        own_rho = SCHEDULES[canonical_schedule(self.schedule or settings.schedule)].default_rho
        if self.rho is None and own_rho is not None:
            filled["rho"] = own_rho
        return dataclasses.replace(self, **filled) if filled else self

    def metadata(self, keep_strength: bool = False) -> dict[str, Any]:
        """JSON-ready values for PNG metadata: the model-default fields and the seed always, the others
        where they differ from their default; ``strength`` only when asked (image-to-image)."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "strength":
                wanted = keep_strength
            else:
                wanted = field.name in (*MODEL_DEFAULTS, *SIZE, "seed") or value != field.default
            if wanted and value is not None:
                out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> SamplingOptions:
        """The options a PNG's metadata records (the fields it has; the rest default)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in meta.items() if k in names})

    @classmethod
    def pick(cls, values: dict[str, Any]) -> SamplingOptions:
        """Options from the entries of ``values`` that are option fields and not None (CLI, API)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value or value < 1:
        raise ValueError(f"must be a positive integer, got {value!r}")
    return int(value)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, got {value!r}")
    return float(value)


def _finite(value: Any) -> float:
    if not math.isfinite(_number(value)):
        raise ValueError(f"must be a finite number, got {value!r}")
    return float(value)


def _positive(value: Any) -> float:
    if _finite(value) <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    return float(value)


def _rescale(value: Any) -> float:
    check_guidance_options(_number(value), (0.0, math.inf))
    return float(value)


def _interval(value: Any) -> tuple[float, float]:
    """(lo, hi), 0 ≤ lo < hi, hi finite: it is stored as JSON in the images (σ_max bounds the walk)."""
    numbers = isinstance(value, list | tuple) and all(isinstance(v, int | float) for v in value)
    if not numbers or len(value) != 2 or any(isinstance(v, bool) for v in value):
        raise ValueError(f"must be two numbers (lo, hi), got {value!r}")
    lo, hi = check_guidance_options(0.0, value)
    if not math.isfinite(hi):
        raise ValueError(f"needs a finite upper σ, got {hi}")
    return lo, hi


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, got {value!r}")
    check_seed(value)
    return pick_seed(value)


def _bounded(check, name: str):
    """``check`` followed by the range of ``name`` (settings.BOUNDS), the same as a model's settings."""

    def checked(value: Any) -> Any:
        value = check(value)
        check_bounds(name, value)
        return value

    return checked


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _deep_cache(value: Any) -> int:
    value = _positive_int(value)
    if value > MAX_INTERVAL:
        raise ValueError(f"must be at most {MAX_INTERVAL}, got {value}")
    return value


def _strength(value: Any) -> float:
    if not 0.0 <= _finite(value) <= 1.0:
        raise ValueError(f"must be in [0, 1], got {value}")
    return float(value)


_CHECKS = {
    "steps": _bounded(_positive_int, "steps"),
    "sampler": lambda name: canonical_sampler(name, tuple(SAMPLERS)),
    "guidance": _bounded(_finite, "guidance"),
    "guidance_rescale": _rescale,
    "guidance_interval": _interval,
    "sigma_min": _bounded(_positive, "sigma_min"),
    "sigma_max": _bounded(_positive, "sigma_max"),
    "rho": _bounded(_positive, "rho"),
    "schedule": canonical_schedule,
    "seed": _seed,
    "width": _bounded(_positive_int, "width"),
    "height": _bounded(_positive_int, "height"),
    "strength": _strength,
    "tile": _flag,
    "deep_cache": _deep_cache,
}
