"""Samplers: one plain function per algorithm over (denoiser, x, sigmas), registered in ``SAMPLERS``.

Every sampler has the signature of ``Sampler``; x is the starting noise already multiplied by
``sigmas[0]``; ``callback(Step)`` runs after every step.
"""

from __future__ import annotations

from .adaptive import ode_adaptive
from .ancestral import ddim, ddpm, dpmpp_2s_ancestral, euler_ancestral
from .base import Callback, Sampler, Step, noise_like
from .consistency import consistency
from .ode import dpmpp_2m, euler, heun, lms
from .pc import pc
from .sde import dpmpp_2m_sde, dpmpp_3m_sde
from .unipc import unipc

SAMPLERS: dict[str, Sampler] = {
    "euler": euler,
    "heun": heun,
    "lms": lms,
    "dpmpp_2m": dpmpp_2m,
    "unipc": unipc,
    "ode_adaptive": ode_adaptive,
    "euler_ancestral": euler_ancestral,
    "ddim": ddim,
    "ddpm": ddpm,
    "dpmpp_2s_ancestral": dpmpp_2s_ancestral,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_3m_sde": dpmpp_3m_sde,
    "pc": pc,
    "consistency": consistency,
}


def get_sampler(name: str) -> Sampler:
    """The sampler called ``name``; a clear error listing the valid names otherwise."""
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(SAMPLERS))
        raise ValueError(f"unknown sampler {name!r}; valid: {valid}") from None


__all__ = ["SAMPLERS", "Callback", "Sampler", "Step", "euler", "get_sampler", "noise_like"]
