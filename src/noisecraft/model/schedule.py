"""The σ schedules a sampling request may choose, by name (ours, or AUTOMATIC1111's "Karras").

Continuous schedules space σ between the request's σ_min and σ_max. Discrete ones pick timesteps of a
DDPM-style model's own σ table (Stable Diffusion's 1,000 steps) as diffusers' ``timestep_spacing``
does: ``uniform`` (linspace, A1111's "Uniform"), ``leading`` and ``trailing`` (Lin et al. 2023, table 2).
``sgm_uniform`` uses the table when the model has one and ln σ otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..schedules import beta_sigmas, discrete_sigmas, exponential, karras, polyexponential, sgm_uniform

# (n, σ_min, σ_max, ρ, dtype, σ table or None) → σ_0 > … > σ_{n−1} > 0 = σ_n
ScheduleFn = Callable[[int, float, float, float, torch.dtype, Tensor | None], Tensor]


@dataclass(frozen=True)
class Schedule:
    """One choice of σ spacing: A1111's label for it, and what it needs."""

    label: str  # A1111's name ("Karras"); our name is the key in SCHEDULES
    sigmas: ScheduleFn
    default_rho: float | None = None  # its own ρ when a request sets none (None: the model's ρ)
    uses_rho: bool = False  # shaped by ρ (the request's, its own, or the model's)
    needs_table: bool = False  # only for models with discrete timesteps (a σ table)
    uses_table: bool = False  # follows the model's σ table where it has one
    aliases: tuple[str, ...] = ()


def _discrete(spacing: str) -> ScheduleFn:
    def sigmas(n: int, lo: float, hi: float, rho: float, dtype: torch.dtype, table: Tensor | None) -> Tensor:
        if table is None:
            raise ValueError(f"schedule {spacing!r} needs a model with discrete timesteps (a DDPM/SD model)")
        return discrete_sigmas(n, table, "linspace" if spacing == "uniform" else spacing, dtype)

    return sigmas


SCHEDULES: dict[str, Schedule] = {
    "karras": Schedule("Karras", lambda n, lo, hi, rho, dt, table: karras(n, lo, hi, rho, dt), uses_rho=True),
    "exponential": Schedule("Exponential", lambda n, lo, hi, rho, dt, table: exponential(n, lo, hi, dt)),
    "polyexponential": Schedule(
        "Polyexponential", lambda n, lo, hi, rho, dt, table: polyexponential(n, lo, hi, rho, dt), 1.0, True
    ),
    "sgm_uniform": Schedule(
        "SGM Uniform",
        lambda n, lo, hi, rho, dt, table: sgm_uniform(n, lo, hi, table, dt),
        uses_table=True,
        aliases=("SGMUniform",),
    ),
    "beta": Schedule("Beta", lambda n, lo, hi, rho, dt, table: beta_sigmas(n, lo, hi, dtype=dt)),
    "uniform": Schedule("Uniform", _discrete("uniform"), needs_table=True, uses_table=True),
    "leading": Schedule("Leading", _discrete("leading"), needs_table=True, uses_table=True),
    "trailing": Schedule("Trailing", _discrete("trailing"), needs_table=True, uses_table=True),
}


def canonical_schedule(name: str) -> str:
    """Our name for a schedule name, its A1111 label or alias (case-insensitive); ValueError listing them."""
    if isinstance(name, str):
        wanted = name.strip().lower()
        for ours, schedule in SCHEDULES.items():
            if wanted in (ours, schedule.label.lower(), *(a.lower() for a in schedule.aliases)):
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
    return SCHEDULES[name].sigmas(steps, sigma_min, sigma_max, rho, dtype, sigma_table)


def schedule_label(name: str) -> str:
    """A1111's name of one of our schedules."""
    return SCHEDULES[name].label


def schedules_for(discrete: bool) -> list[str]:
    """The schedules a model can use: every one for a model with a σ table, else the continuous ones."""
    return [name for name, s in SCHEDULES.items() if discrete or not s.needs_table]
