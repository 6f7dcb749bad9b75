"""The σ schedules a sampling request may choose, by name (ours, or AUTOMATIC1111's "Karras").

Continuous schedules space σ between the request's σ_min and σ_max. Discrete ones pick timesteps of a
DDPM-style model's own σ table (Stable Diffusion's 1,000 steps) as diffusers' ``timestep_spacing``
does: ``uniform`` (linspace, A1111's "Uniform"), ``leading`` and ``trailing`` (Lin et al. 2023, table 2).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..schedules import discrete_sigmas, exponential, karras

# (n, σ_min, σ_max, ρ, dtype, σ table or None) → σ_0 > … > σ_{n−1} > 0 = σ_n
ScheduleFn = Callable[[int, float, float, float, torch.dtype, Tensor | None], Tensor]


def _discrete(spacing: str) -> ScheduleFn:
    def sigmas(n: int, lo: float, hi: float, rho: float, dtype: torch.dtype, table: Tensor | None) -> Tensor:
        if table is None:
            raise ValueError(f"schedule {spacing!r} needs a model with discrete timesteps (a DDPM/SD model)")
        return discrete_sigmas(n, table, "linspace" if spacing == "uniform" else spacing, dtype)

    return sigmas


# our name → (A1111's name, the schedule)
SCHEDULES: dict[str, tuple[str, ScheduleFn]] = {
    "karras": ("Karras", lambda n, lo, hi, rho, dtype, table: karras(n, lo, hi, rho, dtype)),
    "exponential": ("Exponential", lambda n, lo, hi, rho, dtype, table: exponential(n, lo, hi, dtype)),
    "uniform": ("Uniform", _discrete("uniform")),
    "leading": ("Leading", _discrete("leading")),
    "trailing": ("Trailing", _discrete("trailing")),
}


def canonical_schedule(name: str) -> str:
    """Our name for a schedule name or its A1111 name (case-insensitive); ValueError listing them."""
    if isinstance(name, str):
        for ours, (label, _) in SCHEDULES.items():
            if name.strip().lower() in (ours, label.lower()):
                return ours
    raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")


def schedule_sigmas(
    name: str,
    steps: int,
    sigma_min: float,
    sigma_max: float,
    rho: float,
    dtype: torch.dtype,
    sigma_table: Tensor | None = None,
) -> Tensor:
    """The ``steps`` + 1 noise levels of schedule ``name``, ending in 0 (``sigma_table``: a discrete
    model's increasing σ per timestep, for the discrete schedules)."""
    return SCHEDULES[name][1](steps, sigma_min, sigma_max, rho, dtype, sigma_table)


def schedule_label(name: str) -> str:
    """A1111's name of one of our schedules."""
    return SCHEDULES[name][0]
