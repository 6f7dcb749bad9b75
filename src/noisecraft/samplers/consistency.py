"""Multistep consistency sampling (Song et al. 2023, Algorithm 1) for consistency models."""

from __future__ import annotations

from torch import Tensor

from ..conditioning import Conditioning
from ..denoisers import Denoiser
from .base import Callback, Generator, check_inputs, denoise, noise_like, report


def consistency(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Conditioning | None = None,
    *,
    generator: Generator = None,
    callback: Callback | None = None,
) -> Tensor:
    """x̂0 = f(x, σ_0), then at each later σ_i > 0: x = x̂0 + σ_i·z, x̂0 = f(x, σ_i) (Song et al. 2023,
    Algorithm 1); one network call per step, and 1 step is f(σ_max·z, σ_max).

    ``denoiser`` is a consistency function f (a model with ``precond = "consistency"``); the σ_i
    where noise is re-injected are ``sigmas[1:-1]``. Algorithm 1 adds sqrt(σ_i² − σ_min²)·z to a
    sample at σ_min = 0.002; σ_i·z on the clean estimate differs from it by < 1e-5 relative at σ_i ≥ 0.5.
    """
    sigmas = check_inputs(x, sigmas, generator)
    denoised = x
    for i in range(len(sigmas) - 1):
        if i > 0:
            x = denoised + noise_like(denoised, generator) * sigmas[i]
        denoised = denoise(denoiser, x, sigmas[i], cond)
        report(callback, i, sigmas, denoised, denoised)
    return denoised
