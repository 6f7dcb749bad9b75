"""Ancestral samplers: a deterministic move to σ_down, then fresh noise of std σ_up, landing on σ'.

In the σ convention the DDPM posterior is simple (x_σ = x_σ' + sqrt(σ² − σ'²)·n, x_σ' = x0 + σ'·ε):

    q(x_σ' | x_σ, x0) = N(x0 + (σ'/σ)²·(x_σ − x0),  σ'²·(1 − σ'²/σ²)·I)

With x0 replaced by the denoiser's x̂0, DDIM(η = 1), DDPM and Euler ancestral are all this one step,
written three ways; DDIM(η = 0) and Euler ancestral(η = 0) are the Euler step of the ODE.
"""

from __future__ import annotations

import math

from torch import Tensor

from ..conditioning import Conditioning
from ..denoisers import Denoiser
from .base import Callback, Generator, ancestral_step, check_inputs, denoise, noise_like, report, to_d


def check_nonnegative(name: str, value: float) -> None:
    """A sampler option such as η or the noise scale must be a finite number ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_noise_options(eta: float, s_noise: float) -> None:
    """η (how much of the posterior noise to re-inject) and the noise scale s_noise."""
    check_nonnegative("eta", eta)
    check_nonnegative("s_noise", s_noise)


def euler_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Conditioning | None = None,
    *,
    generator: Generator = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """An Euler step of the ODE to σ_down, then noise of std σ_up (k-diffusion; Ho et al. 2020 at η = 1)."""
    sigmas = check_inputs(x, sigmas, generator)
    check_noise_options(eta, s_noise)
    for i in range(len(sigmas) - 1):
        denoised = denoise(denoiser, x, sigmas[i], cond)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigma_up > 0:  # no draw on the last step, so the noise stream lines up with diffusers'
            x = x + noise_like(x, generator) * (s_noise * sigma_up)
        report(callback, i, sigmas, x, denoised)
    return x


def ddim(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Conditioning | None = None,
    *,
    generator: Generator = None,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12) in σ terms: x' = x̂0 + σ_down·ε̂ + σ_up·z.

    Dividing eq. 12 by sqrt(ᾱ') turns sqrt(1 − ᾱ' − σ_t²)·ε̂ into σ_down·ε̂ and σ_t(η)·z into
    σ_up·z with σ_up = η·σ'·sqrt(1 − σ'²/σ²) (eq. 16): η = 1 is the DDPM posterior, η = 0 the ODE.
    """
    sigmas = check_inputs(x, sigmas, generator)
    check_nonnegative("eta", eta)
    for i in range(len(sigmas) - 1):
        denoised = denoise(denoiser, x, sigmas[i], cond)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        eps = (x - denoised) / sigmas[i]  # the ε̂ a VP network would have predicted
        x = denoised + sigma_down * eps  # "direction pointing to x_t", on the σ scale
        if sigma_up > 0:
            x = x + sigma_up * noise_like(x, generator)
        report(callback, i, sigmas, x, denoised)
    return x


def ddpm(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Conditioning | None = None,
    *,
    generator: Generator = None,
    callback: Callback | None = None,
) -> Tensor:
    """Ancestral sampling from the posterior q(x_σ' | x_σ, x̂0) (Ho et al. 2020, eqs. 6–7) in σ terms.

    Mean x̂0 + (σ'/σ)²·(x − x̂0), std σ'·sqrt(1 − σ'²/σ²); the last step, to σ' = 0, is x̂0 itself.
    """
    sigmas = check_inputs(x, sigmas, generator)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(denoiser, x, sigma, cond)
        keep = (sigma_next / sigma) ** 2  # the share of x − x̂0 (the noise) that survives the step
        x = denoised + keep * (x - denoised)
        if sigma_next > 0:
            x = x + sigma_next * (1 - keep).sqrt() * noise_like(x, generator)
        report(callback, i, sigmas, x, denoised)
    return x


def dpmpp_2s_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Conditioning | None = None,
    *,
    generator: Generator = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver++(2S) (Lu et al. 2022, Alg. 1, r = ½) to σ_down, then noise of std σ_up.

    In data-prediction form a first-order step σ → s is x_s = x̂0 + (s/σ)·(x − x̂0); the second-order
    step re-evaluates x̂0 at the log-σ midpoint s = sqrt(σ·σ_down) and takes the full step with it.
    """
    sigmas = check_inputs(x, sigmas, generator)
    check_noise_options(eta, s_noise)
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = denoise(denoiser, x, sigma, cond)
        sigma_down, sigma_up = ancestral_step(sigma, sigmas[i + 1], eta)
        if sigma_down == 0:  # nothing left to integrate: the estimate itself
            x = denoised
        else:
            sigma_mid = (sigma * sigma_down).sqrt()
            x_mid = denoised + (sigma_mid / sigma) * (x - denoised)
            denoised_mid = denoise(denoiser, x_mid, sigma_mid, cond)
            x = denoised_mid + (sigma_down / sigma) * (x - denoised_mid)
        if sigma_up > 0:
            x = x + noise_like(x, generator) * (s_noise * sigma_up)
        report(callback, i, sigmas, x, denoised)
    return x
