"""Checks of a recipe's parts that depend on each other: distillation, adapters, a frozen network and
upscalers; each names in one line what the recipe lacks. ``config.check_ranges`` calls them."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import TrainConfig


def check_distill(c: TrainConfig) -> None:
    """A distillation run needs a consistency student on the Karras grid; nothing else uses them."""
    s, d = c.schedule, c.distill
    if not d.teacher:
        if c.model.precond == "consistency" or s.kind == "karras_grid":
            raise ValueError(
                "model.precond = 'consistency' and schedule.kind = 'karras_grid' need distill.teacher"
            )
        return
    if c.model.precond != "consistency" or s.kind != "karras_grid":
        raise ValueError(
            "distill.teacher needs model.precond = 'consistency' and schedule.kind = 'karras_grid'"
        )
    if s.grid_steps < 2 or not 0 < s.sigma_min < s.sigma_max or s.rho <= 0:
        raise ValueError("schedule: need grid_steps >= 2, 0 < sigma_min < sigma_max and rho > 0")
    if not (0.0 <= d.target_decay < 1.0 and d.huber_c >= 0 and math.isfinite(d.guidance)):
        raise ValueError("distill: need 0 <= target_decay < 1, huber_c >= 0 and a finite guidance")


def check_adapter(c: TrainConfig) -> None:
    a = c.adapter
    if a.kind == "none":
        return
    if a.rank < 1 or a.alpha < 0 or not a.targets:
        raise ValueError("adapter.rank must be ≥ 1, adapter.alpha ≥ 0 and adapter.targets not empty")
    if not c.model.init:
        raise ValueError("adapter.kind = 'lora' trains adapters on a frozen model: set model.init to it")


def require(needs: dict[str, bool], what: str) -> None:
    """One ValueError, ``what`` followed by every requirement in ``needs`` that is not met."""
    missing = [name for name, ok in needs.items() if not ok]
    if missing:
        raise ValueError(f"{what} {', '.join(missing)}")


def text_trains(c: TrainConfig) -> bool:
    """Whether the text encoder has weights that train: the builtin one, or MiniLM with an adapter."""
    return c.text.kind == "builtin" or (c.text.kind == "minilm" and bool(c.text.encoder.get("lora_rank")))


def check_frozen_net(c: TrainConfig) -> None:
    if not c.model.frozen_net:
        return
    needs = {
        "model.init (the network to keep)": bool(c.model.init),
        "a text encoder that trains (text.kind = 'builtin', or 'minilm' with text.encoder.lora_rank > 0)": (
            text_trains(c)
        ),
        "no adapter, distillation or upscaler": (
            c.adapter.kind == "none" and not c.distill.teacher and not c.model.upscale_from
        ),
    }
    require(needs, "model.frozen_net trains the text encoder alone: it needs")


def check_upscaler(c: TrainConfig) -> None:
    m = c.model
    if not m.upscale_from:
        if m.upscale_base or m.upscale_noise:
            raise ValueError("model.upscale_base and model.upscale_noise need model.upscale_from")
        return
    inputs, outputs = m.net.get("in_channels", 3), m.net.get("out_channels", 0)
    needs = {
        "a positive model.upscale_from": m.upscale_from > 0,
        "model.kind = 'unet'": m.kind == "unet",
        "pixels (no model.autoencoder)": not m.autoencoder,
        "text.kind = 'minilm' (a frozen encoder)": c.text.kind == "minilm" and not text_trains(c),
        "model.net.in_channels twice model.net.out_channels": outputs > 0 and inputs == 2 * outputs,
        "model.upscale_base": bool(m.upscale_base),
        "sampling.every = 0 (no previews)": c.sampling.every == 0,
        "0 <= model.upscale_noise <= 1": 0.0 <= m.upscale_noise <= 1.0,
        "no adapter or distillation": c.adapter.kind == "none" and not c.distill.teacher,
    }
    require(needs, f"model.upscale_from = {m.upscale_from}: an upscaler needs")
