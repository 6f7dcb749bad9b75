"""Classifier-free guidance as a Denoiser wrapping a Denoiser, and condition dropout for training it.

Guidance (Ho & Salimans 2022) extrapolates from the unconditional prediction u towards the
conditional one c: D = u + s·(c − u). A negative prompt is simply a different u: pass its
Conditioning as ``uncond`` instead of the empty prompt's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .conditioning import Conditioning, ControlHint
from .denoisers import Denoiser, sigma_vector


def broadcast_batch(cond: Conditioning, batch: int, name: str) -> Conditioning:
    """A Conditioning for ``batch`` samples: one prompt is repeated, ``batch`` prompts are kept."""
    if len(cond) == batch:
        return cond
    if len(cond) == 1:
        return cond.repeat(batch)
    raise ValueError(f"{name} has {len(cond)} prompts; need 1 or one per sample ({batch})")


def rescale_guided(guided: Tensor, conditional: Tensor, phi: float) -> Tensor:
    """Guidance rescale (Lin et al. 2023, §3.4): match the conditional's per-sample std, mixed by φ.

    Lin et al. rescale their network's v-prediction; a Denoiser returns x̂0, so x̂0 is rescaled here,
    which is what the fix is for: the guided image estimate growing too contrasty ("overexposed").
    """
    dims = list(range(1, guided.ndim))
    std_cond = conditional.std(dim=dims, keepdim=True)  # [B, 1, ...]
    std_guided = guided.std(dim=dims, keepdim=True)
    # a constant guided prediction has no spread to rescale: leave it alone instead of dividing by 0
    factor = torch.where(std_guided > 0, std_cond / std_guided, torch.ones_like(std_guided))
    return guided * (phi * factor + (1 - phi))


def check_guidance_options(rescale: float, sigma_interval: tuple[float, float]) -> tuple[float, float]:
    """ValueError unless 0 ≤ rescale ≤ 1 and the interval is (lo, hi), 0 ≤ lo < hi; returns (lo, hi)."""
    if not 0.0 <= rescale <= 1.0:  # also refuses NaN
        raise ValueError(f"guidance rescale must be in [0, 1], got {rescale}")
    try:
        lo, hi = (float(s) for s in sigma_interval)
    except (TypeError, ValueError):
        raise ValueError(f"the guidance interval must be two numbers, got {sigma_interval!r}") from None
    if not 0.0 <= lo < hi:  # also refuses NaN
        raise ValueError(f"the guidance interval must satisfy 0 <= lo < hi, got ({lo}, {hi})")
    return lo, hi


class ClassifierFreeGuidance:
    """D(x, σ, cond) = u + s·(c − u), both halves from one batched call of the wrapped denoiser.

    ``uncond``: the empty prompt's Conditioning, or a negative prompt's (1 prompt, or one per sample).
    ``rescale``: φ of guidance rescale (Lin et al. 2023), 0 = off.
    ``sigma_interval``: guide only where σ_lo < σ ≤ σ_hi (Kynkäänniemi et al. 2024); elsewhere the
    conditional prediction alone is returned, from a single-width call.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        scale: float,
        uncond: Conditioning,
        rescale: float = 0.0,
        sigma_interval: tuple[float, float] = (0.0, math.inf),
    ):
        if not math.isfinite(scale):
            raise ValueError(f"guidance scale must be finite, got {scale}")
        lo, hi = check_guidance_options(rescale, sigma_interval)
        if not isinstance(uncond, Conditioning):
            raise ValueError(f"uncond must be a Conditioning, got {type(uncond).__name__}")
        self.denoiser, self.scale, self.uncond = denoiser, float(scale), uncond
        self.rescale, self.sigma_interval = float(rescale), (lo, hi)

    def combine(self, c: Tensor, u: Tensor) -> Tensor:
        """u + s·(c − u), then guidance rescale."""
        guided = u + self.scale * (c - u)
        return rescale_guided(guided, c, self.rescale) if self.rescale > 0 else guided

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Conditioning | None = None) -> Tensor:
        if cond is None:
            raise ValueError("classifier-free guidance needs a Conditioning for the prompt (got None)")
        sigma = sigma_vector(sigma, x)  # [B]
        b = x.shape[0]
        cond = broadcast_batch(cond, b, "cond")
        lo, hi = self.sigma_interval
        guided = (sigma > lo) & (sigma <= hi) & (self.scale != 1.0)  # [B] samples that need u
        idx = guided.nonzero().squeeze(1)  # [G]
        if idx.numel() == 0:
            return self.denoiser(x, sigma, cond)
        uncond = broadcast_batch(self.uncond.to(x.device), b, "uncond")[idx]
        # one call: the conditional batch, then the unconditional copies of the guided samples
        out = self.denoiser(
            torch.cat([x, x[idx]]), torch.cat([sigma, sigma[idx]]), Conditioning.cat([cond, uncond])
        )
        c, u = out[:b], out[b:]  # [B, ...], [G, ...]
        if idx.numel() == b:
            return self.combine(c, u)
        return c.index_copy(0, idx, self.combine(c[idx], u))


def drop_conditioning(
    cond: Conditioning, empty_cond: Conditioning, p: float, generator: torch.Generator | None
) -> Conditioning:
    """Replace each prompt by the empty prompt with probability p (condition dropout, Ho & Salimans 2022)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if len(empty_cond) != 1:
        raise ValueError(f"empty_cond must hold exactly one prompt, got {len(empty_cond)}")
    b = len(cond)
    draw_on = generator.device if generator is not None else torch.device("cpu")
    drop = (torch.rand(b, generator=generator, device=draw_on) < p).to(cond.tokens.device)  # [B]
    both = Conditioning.cat([cond, empty_cond.to(cond.tokens.device).repeat(b)])  # common token length
    kept, empty = both[:b], both[b:]
    return Conditioning(
        torch.where(drop[:, None, None], empty.tokens, kept.tokens),
        torch.where(drop[:, None], empty.mask, kept.mask),
        torch.where(drop[:, None], empty.pooled, kept.pooled),
    )


@dataclass(frozen=True)
class Control:
    """One control of a generation: a branch, its map [1, C, H, W] in [0, 1], a scale, and a window
    (start, end) as fractions of the sampling steps (A1111's guidance start/end)."""

    branch: nn.Module
    image: Tensor
    scale: float = 1.0
    window: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        lo, hi = self.window
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"a control's window must satisfy 0 <= start <= end <= 1, got ({lo}, {hi})")
        if not torch.isfinite(torch.tensor(float(self.scale))):
            raise ValueError(f"a control's scale must be finite, got {self.scale}")


def sigma_window(window: tuple[float, float], sigmas: Tensor) -> tuple[float, float]:
    """(σ_lo, σ_hi) of the steps i with start ≤ i/steps ≤ end, for a schedule of steps + 1 values."""
    steps = len(sigmas) - 1
    first = min(steps - 1, int(torch.tensor(window[0] * steps).ceil()))
    last = max(first, min(steps - 1, int(torch.tensor(window[1] * steps).floor())))
    if window[1] * steps < first:  # the window holds no step
        return (float("inf"), float("inf"))
    return float(sigmas[last]), float(sigmas[first])


class ControlWindow:
    """A Denoiser that runs ``denoiser`` with the controls whose σ window holds each sample's σ."""

    def __init__(self, denoiser: Denoiser, controls: Sequence[Control], sigmas: Tensor):
        self.denoiser = denoiser
        self.controls = [(c, sigma_window(c.window, sigmas)) for c in controls if c.scale != 0]

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Conditioning | None = None) -> Tensor:
        if cond is None or not self.controls:
            return self.denoiser(x, sigma, cond)
        sigma = sigma_vector(sigma, x)  # [B]
        hints = []
        for control, (lo, hi) in self.controls:
            inside = (sigma >= lo * (1 - 1e-6)) & (sigma <= hi * (1 + 1e-6))  # [B]
            if inside.any():
                scale = control.scale if bool(inside.all()) else inside.to(x.dtype) * control.scale
                hints.append(ControlHint(control.branch, control.image, scale))
        return self.denoiser(x, sigma, cond.with_control(tuple(hints)) if hints else cond)
