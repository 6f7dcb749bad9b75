"""Deterministic samplers of the probability-flow ODE dx/dσ = (x − D(x, σ)) / σ."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..conditioning import Conditioning
from ..denoisers import Denoiser
from .base import Callback, Generator, check_inputs, denoise, noise_like, report, to_d


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


def heun(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Conditioning | None = None,
    *,
    generator: Generator = None,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Tensor:
    """Heun's 2nd-order method with optional churn (Karras et al. 2022, Alg. 2).

    With ``s_churn > 0`` each step with σ in [s_tmin, s_tmax] first raises the noise level to
    σ̂ = σ·(1 + γ), γ = min(s_churn / n, √2 − 1), by adding fresh noise drawn from ``generator``.
    The last step, to σ = 0, is a plain Euler step: the correction would divide by σ = 0.
    """
    sigmas = check_inputs(x, sigmas)
    if s_churn < 0 or s_noise < 0:
        raise ValueError(f"s_churn and s_noise must be non-negative, got {s_churn}, {s_noise}")
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:  # churn: walk back up to σ̂ by adding noise of std sqrt(σ̂² − σ²)
            x = x + noise_like(x, generator) * s_noise * (sigma_hat**2 - sigma**2).sqrt()
        denoised = denoise(denoiser, x, sigma_hat, cond)
        d = to_d(x, sigma_hat, denoised)
        x_next = x + d * (sigma_next - sigma_hat)
        if sigma_next > 0:  # trapezoidal correction with the slope at the Euler prediction
            d_next = to_d(x_next, sigma_next, denoise(denoiser, x_next, sigma_next, cond))
            x_next = x + (d + d_next) / 2 * (sigma_next - sigma_hat)
        x = x_next
        report(callback, i, sigmas, x, denoised)
    return x


def lms_coefficients(nodes: list[float], a: float, b: float) -> list[float]:
    """∫_a^b ℓ_j(σ) dσ for the Lagrange basis ℓ_j on ``nodes``, exact (Gauss–Legendre, float64).

    ℓ_j has degree len(nodes) − 1, so len(nodes) Gauss–Legendre points integrate it exactly.
    """
    points, weights = np.polynomial.legendre.leggauss(len(nodes))
    tau = (b - a) / 2 * points + (a + b) / 2  # Gauss points mapped onto [a, b]
    coeffs = []
    for j, node_j in enumerate(nodes):
        basis = np.prod([(tau - node) / (node_j - node) for k, node in enumerate(nodes) if k != j], axis=0)
        coeffs.append(float((b - a) / 2 * np.sum(weights * basis)))
    return coeffs


def lms(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Conditioning | None = None,
    *,
    generator: Generator = None,
    callback: Callback | None = None,
    order: int = 4,
) -> Tensor:
    """Linear multistep (Adams–Bashforth in σ over uneven steps), as in k-diffusion's ``sample_lms``.

    The slope is extrapolated by the polynomial through the last ``order`` slopes and integrated
    over the step; the first steps, with fewer slopes known, use the order available.
    """
    sigmas = check_inputs(x, sigmas)
    if int(order) != order or order < 1:
        raise ValueError(f"order must be a positive integer, got {order}")
    grid = sigmas.cpu().double().tolist()  # coefficients are computed in float64 whatever x is
    slopes: list[Tensor] = []  # newest last, at most `order`
    for i in range(len(sigmas) - 1):
        denoised = denoise(denoiser, x, sigmas[i], cond)
        slopes = [*slopes, to_d(x, sigmas[i], denoised)][-order:]
        nodes = grid[i - len(slopes) + 1 : i + 1][::-1]  # σ_i, σ_{i−1}, … newest first
        coeffs = lms_coefficients(nodes, grid[i], grid[i + 1])
        x = x + sum(c * d for c, d in zip(coeffs, reversed(slopes)))
        report(callback, i, sigmas, x, denoised)
    return x


def dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Conditioning | None = None,
    *,
    generator: Generator = None,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(2M), the multistep 2nd-order data-prediction solver in t = −log σ (Lu et al. 2022).

    Exact integration of the linear part: x' = (σ'/σ)·x − expm1(−h)·D̂, h = log(σ/σ'), where D̂
    extrapolates the denoised estimate linearly in t from the previous step. The first step (no
    history) and the step to σ = 0 (h = ∞, which lands exactly on D̂) are first order.
    """
    sigmas = check_inputs(x, sigmas)
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(denoiser, x, sigma, cond)
        if sigma_next == 0:
            x = denoised
        else:
            h = (sigma / sigma_next).log()
            estimate = denoised
            if old_denoised is not None:  # r = h_last/h; D̂ = (1 + 1/2r)·D_i − (1/2r)·D_{i−1}
                half_inv_r = h / (2 * h_last)
                estimate = (1 + half_inv_r) * denoised - half_inv_r * old_denoised
            x = (sigma_next / sigma) * x - torch.expm1(-h) * estimate
            h_last = h
        old_denoised = denoised
        report(callback, i, sigmas, x, denoised)
    return x
