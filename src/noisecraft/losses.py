"""Training losses in the σ convention: w(σ)·‖D(x0 + σ·ε, σ) − x0‖², and flow matching.

Every model family's loss is an x0-MSE with a σ-dependent weight, because every prediction target
is an affine function of x̂0 at fixed (x_σ, σ). The weights below are derived from the family's
own loss by substituting that affine map; SNR = 1/σ² throughout (VP: ᾱ/(1 − ᾱ) = 1/σ²).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .conditioning import Conditioning
from .denoisers import Denoiser
from .schedules import sigma_like

Weighting = Callable[[Tensor, float, float], Tensor]  # (σ [B], σ_data, γ) → w [B]


def edm_weight(sigma: Tensor, sigma_data: float, gamma: float) -> Tensor:
    """Karras et al. 2022, eq. 8 / table 1: λ(σ) = (σ² + σ_d²)/(σ·σ_d)² = 1/c_out², unit loss at init."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def snr_weight(sigma: Tensor, sigma_data: float, gamma: float) -> Tensor:
    """ε-prediction MSE (Ho et al. 2020): ε̂ − ε = (x_σ − x̂0)/σ − ε = (x0 − x̂0)/σ, so w = 1/σ² = SNR."""
    return sigma**-2


def min_snr_weight(sigma: Tensor, sigma_data: float, gamma: float) -> Tensor:
    """Hang et al. 2023: ε-loss weighted by min(SNR, γ)/SNR, i.e. w = min(SNR, γ) on the x0-MSE."""
    return (sigma**-2).clamp(max=gamma)


def v_weight(sigma: Tensor, sigma_data: float, gamma: float) -> Tensor:
    """Salimans & Ho 2022: v̂ − v = −(α²+s²)/s·(x̂0 − x0) with s = σ/sqrt(1+σ²), so w = (1+σ²)/σ² = SNR + 1."""
    return 1 + sigma**-2


def flow_weight(sigma: Tensor, sigma_data: float, gamma: float) -> Tensor:
    """Flow matching (Lipman et al. 2023): v̂ − v = (x0 − x̂0)/t with t = σ/(1+σ), so w = ((1+σ)/σ)²."""
    return ((1 + sigma) / sigma) ** 2


def uniform_weight(sigma: Tensor, sigma_data: float, gamma: float) -> Tensor:
    """Plain x0-prediction MSE: w = 1."""
    return torch.ones_like(sigma)


WEIGHTINGS: dict[str, Weighting] = {
    "edm": edm_weight,
    "snr": snr_weight,
    "min_snr": min_snr_weight,
    "v": v_weight,
    "flow": flow_weight,
    "uniform": uniform_weight,
}


def _check_loss_inputs(x0: Tensor, sigma: Tensor | float, noise: Tensor) -> Tensor:
    """Validate shapes and σ > 0; return σ broadcast against x0 ([B, 1, ..., 1])."""
    if not isinstance(x0, Tensor) or x0.ndim < 2:
        raise ValueError("x0 must be a tensor of shape [B, ...] with a batch dimension")
    if not isinstance(noise, Tensor) or noise.shape != x0.shape:
        raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}")
    s = sigma_like(sigma, x0)
    if not (s > 0).all():
        raise ValueError("sigma must be positive (the weights divide by it)")
    return s


def _per_example_mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error over every axis but the batch: [B, ...] → [B]."""
    return (a - b).pow(2).reshape(a.shape[0], -1).mean(1)


def mean_discounted_mse(a: Tensor, b: Tensor, sigma: Tensor, mean_sigma: float) -> Tensor:
    """Per-example MSE [B] with the error's per-channel spatial mean weighted by 1/(1 + (σ/mean_sigma)²).

    MSE = mean‖e − ē‖² + mean‖ē‖² (ē: the mean over H, W; the cross term is zero), so this only scales
    the second term. Each term is minimised by the same E[x0 | x_σ], so the optimum does not move; what
    changes is the gradient noise. At high σ an unnamed background colour cannot be known, and its
    error — almost all in ē — drowns the small, spatially varying signals a prompt decides there (which
    named shape goes left). ``mean_sigma`` ≤ 0 gives the plain MSE.
    """
    if mean_sigma <= 0:
        return _per_example_mse(a, b)
    if a.ndim < 3:
        raise ValueError("a spatial-mean discount needs images [B, C, H, W, ...], got a tensor without axes")
    err = a - b  # [B, C, H, W]
    mean = err.mean(dim=tuple(range(2, err.ndim)), keepdim=True)  # [B, C, 1, 1]
    keep = 1 / (1 + (sigma / mean_sigma) ** 2)  # [B]
    return _per_example_mse(err, mean) + keep * mean.pow(2).reshape(a.shape[0], -1).mean(1)


def denoising_loss(
    denoiser: Denoiser,
    x0: Tensor,
    sigma: Tensor | float,
    noise: Tensor,
    cond: Conditioning | None = None,
    *,
    weighting: str = "edm",
    sigma_data: float = 0.5,
    gamma: float = 5.0,
    mean_sigma: float = 0.0,
) -> Tensor:
    """Per-example w(σ)·mean‖D(x0 + σε, σ, cond) − x0‖² (denoising score matching; Vincent 2011), [B].

    ``mean_sigma`` > 0 discounts the error's spatial mean at σ ≫ mean_sigma (``mean_discounted_mse``).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
    s = _check_loss_inputs(x0, sigma, noise)
    sigma_b = s.reshape(-1)  # [B]
    denoised = denoiser(x0 + s * noise, sigma_b, cond)  # [B, ...]
    mse = mean_discounted_mse(denoised, x0, sigma_b, mean_sigma)
    return WEIGHTINGS[weighting](sigma_b, sigma_data, gamma) * mse


def flow_matching_loss(
    denoiser: Denoiser,
    x0: Tensor,
    sigma: Tensor | float,
    noise: Tensor,
    cond: Conditioning | None = None,
) -> Tensor:
    """Rectified-flow loss mean‖v̂ − (ε − x0)‖² at t = σ/(1+σ) (Liu et al. 2022; Lipman et al. 2023), [B].

    x_t = (1 − t)·x0 + t·ε = x_σ/(1 + σ), and x_t = x0 + t·(ε − x0) gives the velocity of any x0
    estimate: v̂ = (x_t − x̂0)/t. Equal to ``denoising_loss(weighting="flow")``, computed directly.
    """
    s = _check_loss_inputs(x0, sigma, noise)
    t = s / (1 + s)  # [B, 1, ..., 1]
    x_t = (1 - t) * x0 + t * noise
    denoised = denoiser(x_t / (1 - t), s.reshape(-1), cond)  # the VE point x_σ = x_t/(1 − t)
    return _per_example_mse((x_t - denoised) / t, noise - x0)


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """sqrt(‖a − b‖² + c²) − c per example (Song & Dhariwal 2024, iCT), [B]; ‖·‖ over every non-batch axis."""
    return ((a - b).pow(2).reshape(a.shape[0], -1).sum(1) + c**2).sqrt() - c
