"""What every sampler shares: the ``Step`` handed to callbacks, input checks, and seeded noise."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from ..conditioning import Conditioning
from ..denoisers import Denoiser
from ..noise import Noise, SeededNoise, as_noise
from ..schedules import check_sigmas

# Where a sampler's fresh noise comes from: a SeededNoise (one generator per sample, as Pipeline
# uses), one torch generator, or None (torch's global generator).
Generator = Noise | torch.Generator | None


@dataclass
class Step:
    """One finished sampler step: x is the sample now at ``sigma_next``, ``denoised`` the x̂0 used."""

    index: int  # 0 … total − 1
    sigma: float  # σ the step started from
    x: Tensor  # (B, ...) the sample after the step
    denoised: Tensor  # (B, ...) the denoiser's x̂0 estimate at ``sigma``
    sigma_next: float = 0.0  # σ the step arrived at
    total: int = 0  # number of steps in the whole walk


Callback = Callable[[Step], None]


class Sampler(Protocol):
    """sampler(denoiser, x = noise·σ_0, sigmas, cond, *, generator, callback) → final sample."""

    def __call__(
        self,
        denoiser: Denoiser,
        x: Tensor,
        sigmas: Tensor,
        cond: Conditioning | None = None,
        *,
        generator: Generator = None,
        callback: Callback | None = None,
    ) -> Tensor: ...


def check_inputs(x: Tensor, sigmas: Tensor, generator: Generator = None) -> Tensor:
    """Validate a sampler's inputs (one seeded generator per sample); return σ on x's device and dtype."""
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError("x must be a tensor of shape [B, ...] with a batch dimension")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or infinity")
    if isinstance(generator, SeededNoise) and len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} seeded generators for a batch of {x.shape[0]}")
    return check_sigmas(sigmas).to(device=x.device, dtype=x.dtype)


def denoise(denoiser: Denoiser, x: Tensor, sigma: Tensor, cond: Conditioning | None) -> Tensor:
    """Call the denoiser with σ broadcast to the batch: D(x, σ·1_B, cond)."""
    return denoiser(x, sigma.expand(x.shape[0]), cond)


def noise_like(x: Tensor, generator: Generator) -> Tensor:
    """Standard normal noise shaped like x.

    With a SeededNoise each row is drawn from its own generator, so a sample's noise — and so its
    result — does not depend on the batch it was drawn in.
    """
    return as_noise(generator).randn_like(x)


def report(callback: Callback | None, i: int, sigmas: Tensor, x: Tensor, denoised: Tensor) -> None:
    """Hand step i to the callback, if any."""
    if callback is not None:
        total = len(sigmas) - 1
        callback(Step(i, float(sigmas[i]), x, denoised, float(sigmas[i + 1]), total))


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The probability-flow ODE's slope dx/dσ = (x − D(x, σ)) / σ (Karras et al. 2022, eq. 4)."""
    return (x - denoised) / sigma


def ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Split a step σ → σ' into a deterministic part to σ_down and fresh noise of std σ_up.

    σ_up = η·sqrt(σ'²(σ² − σ'²)/σ²) is the posterior std of q(x_σ' | x_σ, x0); σ_down² + σ_up² = σ'².
    """
    if eta == 0 or sigma_next == 0:
        return sigma_next, torch.zeros_like(sigma_next)
    sigma_up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt())
    return (sigma_next**2 - sigma_up**2).sqrt(), sigma_up
