"""Multistep DPM-Solver++ for the reverse SDE (Lu et al. 2022, "DPM-Solver++", §4 and App. B).

Written in λ = −log σ with the data prediction x̂0. Over a step of length h = log(σ/σ'), the SDE
with noise share η has exact linear part x' = e^{−(1+η)h}·x + (1 − e^{−(1+η)h})·x̂0 plus Gaussian
noise of std σ'·sqrt(1 − e^{−2ηh}); the multistep terms extrapolate x̂0 in λ from earlier steps.
At η = 1 the first-order step is exactly the DDPM posterior; at η = 0 it is DPM-Solver++ (the ODE).
Noise is one fresh Gaussian draw per step from ``noise_like`` (no Brownian tree).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from ..conditioning import Conditioning
from ..denoisers import Denoiser
from .ancestral import check_noise_options
from .base import Callback, Generator, check_inputs, denoise, noise_like, report

SolverType = Literal["midpoint", "heun"]


def _sde_noise(
    x: Tensor, sigma_next: Tensor, h: Tensor, eta: float, s_noise: float, generator: Generator
) -> Tensor | float:
    """The step's fresh noise, std σ'·sqrt(1 − e^{−2ηh})·s_noise; nothing drawn when η = 0."""
    if eta == 0:
        return 0.0
    std = sigma_next * (-(-2 * eta * h).expm1()).sqrt() * s_noise
    return std * noise_like(x, generator)


def dpmpp_2m_sde(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Conditioning | None = None,
    *,
    generator: Generator = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: SolverType = "midpoint",
) -> Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, App. B): second order from the previous step's x̂0.

    ``solver_type`` picks the coefficient of the x̂0 slope: "midpoint" ½·(1 − e^{−ĥ}) as in the paper,
    "heun" φ₂(ĥ) = 1 − (1 − e^{−ĥ})/ĥ, exact when x̂0 is linear in λ (ĥ = (1 + η)·h).
    """
    sigmas = check_inputs(x, sigmas, generator)
    check_noise_options(eta, s_noise)
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"unknown solver_type {solver_type!r}; valid: midpoint, heun")
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(denoiser, x, sigma, cond)
        if sigma_next == 0:  # the last step lands on the estimate itself
            x = denoised
        else:
            h = (sigma / sigma_next).log()
            h_eta = (1 + eta) * h
            phi_1 = -(-h_eta).expm1()  # 1 − e^{−ĥ}
            x = (-h_eta).exp() * x + phi_1 * denoised
            if old_denoised is not None:
                slope = (denoised - old_denoised) * (h / h_last)  # dx̂0/dλ · h
                coef = 0.5 * phi_1 if solver_type == "midpoint" else 1 - phi_1 / h_eta
                x = x + coef * slope
            x = x + _sde_noise(x, sigma_next, h, eta, s_noise, generator)
            old_denoised, h_last = denoised, h
        report(callback, i, sigmas, x, denoised)
    return x


def dpmpp_3m_sde(
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
    """SDE-DPM-Solver++(3M): x̂0 extrapolated quadratically in λ from the last three steps (Lu et al. 2022).

    The first two steps fall back to first and second order while the history fills up. The
    second-derivative term is the exact one (see ``_multistep_correction``), so a step is exact
    when x̂0 is quadratic in λ and the η = 0 limit converges at third order; k-diffusion's and
    diffusers' 3M use half of that term, so their samples differ from ours by O(h³) per step.
    """
    sigmas = check_inputs(x, sigmas, generator)
    check_noise_options(eta, s_noise)
    history: list[tuple[Tensor, Tensor]] = []  # (x̂0, h) of the previous steps, newest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(denoiser, x, sigma, cond)
        if sigma_next == 0:
            x = denoised
        else:
            h = (sigma / sigma_next).log()
            h_eta = (1 + eta) * h
            phi_1 = -(-h_eta).expm1()
            phi_2 = 1 - phi_1 / h_eta  # (e^{−ĥ} − 1 + ĥ)/ĥ
            phi_3 = phi_2 / h_eta - 0.5  # (e^{−ĥ} − 1 + ĥ − ĥ²/2)/ĥ²
            x = (-h_eta).exp() * x + phi_1 * denoised
            x = x + _multistep_correction(denoised, h, history, phi_2, phi_3)
            x = x + _sde_noise(x, sigma_next, h, eta, s_noise, generator)
            history = [(denoised, h), *history[:1]]
        report(callback, i, sigmas, x, denoised)
    return x


def _multistep_correction(
    denoised: Tensor, h: Tensor, history: list[tuple[Tensor, Tensor]], phi_2: Tensor, phi_3: Tensor
) -> Tensor | float:
    """The step's higher-order terms φ₂·d1 − 2φ₃·d2, from x̂0(λ + u) ≈ x̂0 + u·x̂0' + ½u²·x̂0''.

    d1 ≈ h·x̂0' and d2 ≈ ½h²·x̂0'' are divided differences over the history (λ steps h_1, h_2),
    both exact for a quadratic x̂0; the 2 is from ∫₀^ĥ v²·e^{−(ĥ−v)} dv = −2ĥ²·φ₃(ĥ).
    """
    if not history:
        return 0.0
    denoised_1, h_1 = history[0]
    r0 = h_1 / h
    d1_0 = (denoised - denoised_1) / r0  # first divided difference, times h
    if len(history) == 1:
        return phi_2 * d1_0
    denoised_2, h_2 = history[1]
    r1 = h_2 / h
    d1_1 = (denoised_1 - denoised_2) / r1
    d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)  # slope at the current point, second-order accurate
    d2 = (d1_0 - d1_1) / (r0 + r1)  # half the second derivative, times h²
    return phi_2 * d1 - 2 * phi_3 * d2
