"""Samplers: one plain function per algorithm over (denoiser, x, sigmas), registered in ``SAMPLERS``.

Every sampler has the signature of ``Sampler``; x is the starting noise already multiplied by
``sigmas[0]``; ``callback(Step)`` runs after every step.
"""

from __future__ import annotations

from .base import Callback, Sampler, Step, noise_like
from .ode import euler

SAMPLERS: dict[str, Sampler] = {
    "euler": euler,
}


def get_sampler(name: str) -> Sampler:
    """The sampler called ``name``; a clear error listing the valid names otherwise."""
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(SAMPLERS))
        raise ValueError(f"unknown sampler {name!r}; valid: {valid}") from None


__all__ = ["SAMPLERS", "Callback", "Sampler", "Step", "euler", "get_sampler", "noise_like"]
