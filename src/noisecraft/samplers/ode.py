"""Deterministic samplers of the probability-flow ODE dx/dσ = (x − D(x, σ)) / σ."""

from __future__ import annotations

from torch import Tensor

from ..conditioning import Conditioning
from ..denoisers import Denoiser
from .base import Callback, Generator, check_inputs, denoise, report, to_d


def euler(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Conditioning | None = None,
    *,
    generator: Generator = None,
    callback: Callback | None = None,
) -> Tensor:
    """First-order Euler steps of the probability-flow ODE (Karras et al. 2022, Alg. 1 without Heun)."""
    sigmas = check_inputs(x, sigmas)
    for i in range(len(sigmas) - 1):
        denoised = denoise(denoiser, x, sigmas[i], cond)
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        report(callback, i, sigmas, x, denoised)
    return x
