"""The σ schedules a sampling request may choose, by name (ours, or AUTOMATIC1111's "Karras")."""

from __future__ import annotations

import torch
from torch import Tensor

from ..schedules import exponential, karras

# name → (A1111's name, σ_0 > … > σ_{n-1} > 0 = σ_n from (n, σ_min, σ_max, ρ, dtype))
SCHEDULES = {
    "karras": ("Karras", lambda n, lo, hi, rho, dtype: karras(n, lo, hi, rho, dtype)),
    "exponential": ("Exponential", lambda n, lo, hi, rho, dtype: exponential(n, lo, hi, dtype)),
}


def canonical_schedule(name: str) -> str:
    """Our name for a schedule name or its A1111 name (case-insensitive); ValueError listing them."""
    if isinstance(name, str):
        for ours, (label, _) in SCHEDULES.items():
            if name.strip().lower() in (ours, label.lower()):
                return ours
    raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")


def schedule_sigmas(
    name: str, steps: int, sigma_min: float, sigma_max: float, rho: float, dtype: torch.dtype
) -> Tensor:
    """The ``steps`` + 1 noise levels of schedule ``name``, ending in 0."""
    return SCHEDULES[name][1](steps, sigma_min, sigma_max, rho, dtype)


def schedule_label(name: str) -> str:
    """A1111's name of one of our schedules."""
    return SCHEDULES[name][0]
