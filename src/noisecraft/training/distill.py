"""Consistency distillation (Song et al. 2023, Algorithm 2) from a frozen teacher, as a training objective.

One example: σ_{n+1} drawn on a Karras grid (``schedule.kind = "karras_grid"``), x_{n+1} = x0 + σ_{n+1}·ε;
the teacher's guided ODE step (Heun or Euler) gives x̂_n at the grid point below; the loss is
d(f_θ(x_{n+1}, σ_{n+1}), f_θ⁻(x̂_n, σ_n)) with d the pseudo-Huber metric (Song & Dhariwal 2024) and
θ⁻ the target network, an EMA of θ (μ = distill.target_decay; 0 is θ without gradient, as in iCT/ECT).
The student f_θ is an ordinary network under ``ConsistencyPrecond``; it starts from the teacher's weights.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..conditioning import Conditioning
from ..guidance import ClassifierFreeGuidance
from ..losses import pseudo_huber
from ..model import find_weights, load_model
from ..schedules import karras
from .config import ScheduleConfig, TrainConfig, apply_overrides, from_dict, resolve_recipe

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

DISTILL_RECIPE = "distill"  # configs/distill.toml: the fields a distillation sets over the teacher's recipe


def grid(schedule: ScheduleConfig) -> Tensor:
    """The Karras grid σ_1 = σ_min < … < σ_N = σ_max (Song et al. 2023, sec. 4), [N] float64."""
    s = schedule
    return karras(s.grid_steps, s.sigma_min, s.sigma_max, s.rho, torch.float64)[:-1].flip(0)


def draw_grid_sigma(schedule: ScheduleConfig, n: int, generator: torch.Generator) -> Tensor:
    """n values σ_{k+1}, k uniform in 1 … N−1: the upper point of each training pair, [n] float32."""
    index = torch.randint(1, schedule.grid_steps, (n,), generator=generator)  # [n] in 1 … N−1
    return grid(schedule)[index].float()


def grid_below(sigma: Tensor, schedule: ScheduleConfig) -> Tensor:
    """The grid point just below each σ (ρ-space step of the Karras grid), never under σ_min, [B]."""
    s = schedule
    lo, hi = s.sigma_min ** (1 / s.rho), s.sigma_max ** (1 / s.rho)
    below = sigma.double() ** (1 / s.rho) - (hi - lo) / (s.grid_steps - 1)
    return below.clamp(min=lo).pow(s.rho).to(sigma.dtype)


@torch.no_grad()
def teacher_step(
    teacher: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigma: Tensor, sigma_next: Tensor, solver: str
) -> Tensor:
    """One step of the probability-flow ODE dx/dσ = (x − D(x, σ))/σ from σ to σ_next > 0, [B, ...]."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    s, s_next = sigma.reshape(shape), sigma_next.reshape(shape)
    slope = (x - teacher(x, sigma)) / s
    x_next = x + (s_next - s) * slope  # Euler
    if solver == "heun":  # Karras et al. 2022, Algorithm 1's correction
        slope_next = (x_next - teacher(x_next, sigma_next)) / s_next
        x_next = x + (s_next - s) * (slope + slope_next) / 2
    return x_next


class ConsistencyObjective(nn.Module):
    """The student (``denoiser``) and its target network; per-example distillation loss, [B].

    The teacher is held outside the module's parameters and state (it is frozen and comes from its own
    folder), so checkpoints and the EMA hold the student and the target only.
    """

    def __init__(
        self, denoiser: nn.Module, teacher: nn.Module, uncond: Conditioning | None, config: TrainConfig
    ):
        super().__init__()
        self.denoiser, self.text_encoder = denoiser, None
        d = config.distill
        self.target = copy.deepcopy(denoiser).requires_grad_(False) if d.target_decay > 0 else None
        self._teacher = [teacher.requires_grad_(False).eval()]  # a list: not a submodule
        self.uncond, self.schedule, self.distill = uncond, config.schedule, d

    def _apply(self, fn, *args, **kwargs):  # .to(device, dtype) moves the teacher and uncond too
        self._teacher[0]._apply(fn, *args, **kwargs)
        if self.uncond is not None:
            self.uncond = self.uncond.to(fn(torch.zeros(1)).device)
        return super()._apply(fn, *args, **kwargs)

    def guided_teacher(self, cond: Conditioning | None) -> Callable[[Tensor, Tensor], Tensor]:
        teacher = self._teacher[0]
        if cond is None or self.uncond is None or self.distill.guidance == 1.0:
            return lambda x, sigma: teacher(x, sigma, cond)
        guided = ClassifierFreeGuidance(teacher, self.distill.guidance, self.uncond)
        return lambda x, sigma: guided(x, sigma, cond)

    @torch.no_grad()
    def update_target(self) -> None:
        """θ⁻ ← μ·θ⁻ + (1 − μ)·θ after each optimizer step (Song et al. 2023, Algorithm 2)."""
        if self.target is not None:
            mine, theirs = list(self.target.parameters()), [p.detach() for p in self.denoiser.parameters()]
            torch._foreach_lerp_(mine, theirs, 1 - self.distill.target_decay)

    def forward(self, x0: Tensor, sigma: Tensor, noise: Tensor, cond: Conditioning | None) -> Tensor:
        shape = (-1,) + (1,) * (x0.ndim - 1)
        sigma_below = grid_below(sigma, self.schedule)  # [B]
        x = x0 + sigma.reshape(shape) * noise  # [B, ...] at σ_{n+1}
        x_below = teacher_step(self.guided_teacher(cond), x, sigma, sigma_below, self.distill.solver)
        with torch.no_grad():
            target = (self.target or self.denoiser)(x_below, sigma_below, cond)
        c = self.distill.huber_c or 0.00054 * math.sqrt(x0[0].numel())
        weight = 1 / (sigma - sigma_below)  # λ(σ_n) = 1/(σ_{n+1} − σ_n) (iCT, Song & Dhariwal 2024)
        return weight * pseudo_huber(self.denoiser(x, sigma, cond), target, c)


def load_teacher(source: str) -> tuple[nn.Module, nn.Module | None]:
    """(teacher denoiser, its text encoder), fp32 and frozen, from a shipped name or a model folder."""
    parts, _ = load_model(source)
    denoiser = parts.settings.denoiser(parts.net.float())
    text = parts.text_encoder.float().requires_grad_(False).eval() if parts.text_encoder is not None else None
    return denoiser.requires_grad_(False).eval(), text


def distill_config(teacher: str, recipe: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """The teacher's own training recipe (its training.json) with the distillation recipe over it
    (``configs/distill.toml`` unless ``recipe`` names another), then ``model.init`` and
    ``distill.teacher`` set to the teacher and the ``--set`` overrides applied last."""
    folder = find_weights(teacher)
    try:
        base = json.loads((folder / "training.json").read_text())["config"]
    except (OSError, KeyError, TypeError, ValueError):
        raise ValueError(
            f"{folder}: no training.json with its recipe: distill needs a model trained here"
        ) from None
    path = resolve_recipe(recipe or DISTILL_RECIPE)
    try:
        over = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None
    values = _merge(base, over)
    values["model"].update(init=teacher, init_new=[], frozen_net=False)  # the student's network trains
    values.setdefault("distill", {})["teacher"] = teacher
    return from_dict(TrainConfig, apply_overrides(values, list(overrides)))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over``'s values over ``base``'s, table by table."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    return out
