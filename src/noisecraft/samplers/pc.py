"""Predictor–corrector sampling of the variance-exploding SDE (Song et al. 2021, "Score-based SDEs")."""

from __future__ import annotations

import torch
from torch import Tensor

from ..conditioning import Conditioning
from ..denoisers import Denoiser
from .ancestral import check_nonnegative
from .base import Callback, Generator, check_inputs, denoise, noise_like, report


def pc(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Conditioning | None = None,
    *,
    generator: Generator = None,
    callback: Callback | None = None,
    snr: float = 0.16,
    corrector_steps: int = 1,
) -> Tensor:
    """Reverse-diffusion predictor + Langevin corrector (Song et al. 2021, Algs. 2 and 4, VE SDE).

    Predictor σ → σ': x' = x + (σ² − σ'²)·∇log p_σ(x) + sqrt(σ² − σ'²)·z, with the score
    (D − x)/σ²; then ``corrector_steps`` Langevin steps on p_σ'. ``snr`` = 0.16 is the paper's
    value for VE models on CIFAR-10. The last step, to σ' = 0, returns the denoised estimate
    D(x, σ) = E[x0 | x] (Tweedie) — no score exists at σ = 0 and no noise is left to add.
    """
    sigmas = check_inputs(x, sigmas, generator)
    check_nonnegative("snr", snr)
    if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be an integer >= 0, got {corrector_steps!r}")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(denoiser, x, sigma, cond)
        if sigma_next == 0:
            x = denoised
        else:
            variance = sigma**2 - sigma_next**2  # the VE SDE's added variance over the step
            x = x + variance / sigma**2 * (denoised - x) + variance.sqrt() * noise_like(x, generator)
            for _ in range(corrector_steps):
                x = langevin_step(denoiser, x, sigma_next, cond, generator, snr)
        report(callback, i, sigmas, x, denoised)
    return x


def langevin_step(
    denoiser: Denoiser, x: Tensor, sigma: Tensor, cond: Conditioning | None, generator: Generator, snr: float
) -> Tensor:
    """One Langevin step x + ε·∇log p_σ(x) + sqrt(2ε)·z targeting p_σ (Song et al. 2021, Alg. 4).

    Alg. 4 sets ε = 2·(snr·‖z‖/‖∇log p‖)² so that the drift is ``snr`` times the noise. Its norms
    concentrate in high dimension at ‖z‖² ≈ d and ‖∇log p_σ‖² ≈ d/σ² (the score of mostly noise),
    where ε ≈ 2·(snr·σ)²; we use that value directly. It needs no batch statistics, so each sample
    stays independent of its batch, and it stays bounded in low dimension, where a small ‖∇log p‖
    near a mode would otherwise make the step arbitrarily large (per-sample norms on the 2-D test
    mixture give covariances ~100× too wide; the paper's code averages norms over the batch).
    """
    step = 2 * (snr * sigma) ** 2
    score = (denoise(denoiser, x, sigma, cond) - x) / sigma**2
    return x + step * score + torch.sqrt(2 * step) * noise_like(x, generator)
