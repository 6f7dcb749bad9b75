"""Probability-flow ODE likelihoods against exact Gaussian / mixture densities, bits/dim, dequantisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from noisecraft.conditioning import Conditioning
from noisecraft.denoisers import GaussianMixtureDenoiser
from noisecraft.likelihood import (
    bits_per_dim,
    denoise_with_trace,
    dequantize,
    image_bits_per_dim,
    log_likelihood,
    rademacher,
)

SIGMA_MIN, SIGMA_MAX = 1e-3, 80.0


def correlated_gaussian(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A mean of scale 0.5 per coordinate and a well-conditioned covariance with strong correlations."""
    g = torch.Generator().manual_seed(seed)
    mean = 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return mean, 0.3 * a @ a.T + 0.05 * torch.eye(d, dtype=torch.float64)


def gaussian_samples(mean: torch.Tensor, cov: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n draws from N(mean, cov), [n, d] float64, from a seeded generator."""
    eps = torch.randn(n, mean.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return mean + eps @ torch.linalg.cholesky(cov).T


def gaussian_oracle(mean: torch.Tensor, cov: torch.Tensor) -> GaussianMixtureDenoiser:
    return GaussianMixtureDenoiser(mean[None], cov[None])


def test_gaussian_2d_bits_per_dim_and_per_point():
    mean, cov = correlated_gaussian(2, seed=0)
    x = gaussian_samples(mean, cov, 64, seed=10)  # [64, 2]
    log_p = log_likelihood(gaussian_oracle(mean, cov), x, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    exact = MultivariateNormal(mean, cov).log_prob(x)  # [64]
    bpd, bpd_exact = bits_per_dim(log_p, 2).mean(), bits_per_dim(exact, 2).mean()
    assert abs(bpd - bpd_exact) < 0.01
    # Per point the N(0, σ_max²I) prior is off by ≈ x(σ_max)·μ/σ_max² with ‖x(σ_max)‖ ≈ σ_max·‖z‖,
    # z ~ N(0, I₂); ‖z‖ < 4 except with probability e^−8 per point. Plus 1e-3 for the ODE solve.
    bound = mean.norm().item() * 4 / SIGMA_MAX + 1e-3
    assert (log_p - exact).abs().max() < bound


def test_mixture2d_per_point_with_exact_prior(mixture2d):
    x = mixture2d.sample(24, torch.Generator().manual_seed(1)).double()  # [24, 2]
    log_p = log_likelihood(
        mixture2d,
        x,
        sigma_min=SIGMA_MIN,
        sigma_max=SIGMA_MAX,
        rtol=1e-6,
        atol=1e-6,
        prior_log_prob=lambda z: mixture2d.log_prob(z, SIGMA_MAX),
    )
    # With the exact score and prior the ODE identity is exact: only solver error is left, which
    # shrinks ~30× per decade of tolerance (measured 3e-5 at 1e-6, 1e-6 at 1e-7).
    assert (log_p - mixture2d.log_prob(x, SIGMA_MIN)).abs().max() < 2e-4
    # σ_min smoothing is a ½σ_min²·Δp/p effect: invisible next to the 1e-2 bits/dim of the task.
    assert (log_p - mixture2d.log_prob(x, 0.0)).abs().max() < 3e-4


def test_gaussian_8d_hutchinson_matches_analytic_and_exact_trace():
    mean, cov = correlated_gaussian(8, seed=2)
    oracle = gaussian_oracle(mean, cov)
    x = gaussian_samples(mean, cov, 32, seed=11)  # [32, 8]
    exact = MultivariateNormal(mean, cov).log_prob(x)
    log_p_exact_trace = log_likelihood(oracle, x)  # 8 ≤ EXACT_MAX_DIM: exact Jacobian trace
    assert abs(bits_per_dim(log_p_exact_trace, 8).mean() - bits_per_dim(exact, 8).mean()) < 0.01

    g = torch.Generator().manual_seed(3)
    log_p = log_likelihood(oracle, x, exact=False, n_probes=32, generator=g)
    residual = bits_per_dim(log_p, 8) - bits_per_dim(exact, 8)  # [32], zero-mean Hutchinson noise
    assert residual.std() > 1e-3  # the estimator really ran: exact traces agree to ~1e-5
    # The probes are independent across points, so the mean residual is unbiased with standard
    # error std/√32; 4 SE plus the 2e-3 bits the exact-trace solve itself may be off.
    assert abs(residual.mean()) < 4 * residual.std() / math.sqrt(32) + 2e-3


def test_hutchinson_estimator_is_unbiased():
    mean, cov = correlated_gaussian(8, seed=4)
    oracle = gaussian_oracle(mean, cov)
    x = gaussian_samples(mean, cov, 1, seed=12) + 0.3  # [1, 8]
    sigma = torch.tensor([0.5], dtype=torch.float64)
    _, exact = denoise_with_trace(oracle, x, sigma)
    # For a Gaussian ∂D/∂x = Σ(Σ + σ²I)⁻¹, so tr = Σ_i λ_i/(λ_i + σ²).
    lam = torch.linalg.eigvalsh(cov)
    assert torch.allclose(exact, (lam / (lam + 0.25)).sum(), atol=1e-10)

    n = 4000  # one probe per copy of x: n independent single-probe estimates in one call
    probes = rademacher((1, n, 8), torch.Generator().manual_seed(5), x)
    _, single = denoise_with_trace(oracle, x.expand(n, 8), sigma.expand(n), probes=probes)  # [n]
    se = single.std() / math.sqrt(n)
    assert se > 1e-3  # off-diagonal Jacobian terms make single probes noisy
    assert abs(single.mean() - exact) < 4 * se


def test_bits_per_dim_constants():
    d = 12
    uniform = torch.full((3,), -d * math.log(2.0), dtype=torch.float64)  # U[−1, 1]^d has density 2^−d
    assert torch.allclose(bits_per_dim(uniform, d, bins=256), torch.full((3,), 8.0, dtype=torch.float64))
    assert torch.allclose(bits_per_dim(uniform, d), torch.ones(3, dtype=torch.float64))


def test_dequantized_bpd_bounds_discrete_gaussian_bpd():
    """E_u[log p_y(dequantize(k))] + d·ln(2/256) vs log P(k) of the binned density: Jensen gap only."""
    mu, s = torch.tensor([0.1, -0.2], dtype=torch.float64), 0.3
    g = torch.Generator().manual_seed(6)
    k = ((mu + s * torch.randn(40, 2, generator=g, dtype=torch.float64) + 1) * 128).clamp(0, 255)
    k = k.to(torch.uint8)  # [40, 2]
    edges = k.double() * (2 / 256) - 1  # left edge of each bin in [−1, 1)
    normal = Normal(mu, s)
    log_pk = (normal.cdf(edges + 2 / 256) - normal.cdf(edges)).log().sum(1)  # [40] discrete
    y = torch.stack([dequantize(k, g).double() for _ in range(64)])  # [64, 40, 2]
    log_py = normal.log_prob(y).sum(-1).mean(0)  # [40]
    bpd, bpd_discrete = bits_per_dim(log_py, 2, bins=256), bits_per_dim(log_pk, 2)
    # Jensen gap ≈ (h/s)²/24 nats with h = 2/256; the bound must hold on average, and a wrong
    # bin width (2/255 instead of 2/256) would shift everything by log₂(256/255) ≈ 5.6e-3 bits.
    assert (bpd - bpd_discrete).mean() > -1e-4
    assert (bpd - bpd_discrete).abs().mean() < 1e-3


def test_image_bits_per_dim_end_to_end():
    mu, s = torch.tensor([0.1, -0.2], dtype=torch.float64), 0.3
    g = torch.Generator().manual_seed(7)
    y = mu + s * torch.randn(24, 2, generator=g, dtype=torch.float64)
    k = ((y + 1) * 128).clamp(0, 255).to(torch.uint8)  # [24, 2] "8-bit images" of two pixels
    edges = k.double() * (2 / 256) - 1
    normal = Normal(mu, s)
    bpd_discrete = bits_per_dim((normal.cdf(edges + 2 / 256) - normal.cdf(edges)).log().sum(1), 2)
    oracle = gaussian_oracle(mu, torch.diag(torch.full((2,), s**2, dtype=torch.float64)))
    bpd = image_bits_per_dim(oracle, k, generator=g)  # float32 path
    # One dequantisation draw per image: log p_y varies by ≈ |∇ log p|·h ≈ 0.05 nats across a bin,
    # so the per-image residuals are noisy but the mean is unbiased up to the Jensen gap.
    residual = bpd - bpd_discrete
    assert abs(residual.mean()) < 0.01
    assert residual.abs().max() < 0.1


def test_dequantize_range_and_seed():
    images = torch.tensor([[0, 1, 127, 128, 254, 255]], dtype=torch.uint8).repeat(50, 1)
    a = dequantize(images, torch.Generator().manual_seed(0))
    b = dequantize(images, torch.Generator().manual_seed(0))
    c = dequantize(images, torch.Generator().manual_seed(1))
    assert a.dtype == torch.float32 and a.shape == images.shape
    assert a.min() >= -1 and a.max() < 1
    assert torch.equal(((a.double() + 1) * 128).floor().to(torch.uint8), images)  # stays in its bin
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_inputs(mixture2d):
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="NaN"):
        log_likelihood(mixture2d, torch.full((3, 2), math.nan))
    with pytest.raises(ValueError, match=r"\[B, \.\.\.\]"):
        log_likelihood(mixture2d, torch.zeros(2))
    with pytest.raises(ValueError, match="sigma_min"):
        log_likelihood(mixture2d, x, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="n_probes"):
        log_likelihood(mixture2d, x, exact=False, n_probes=0)
    with pytest.raises(ValueError, match="denoiser returned shape"):
        log_likelihood(lambda x, s, c=None: x[:, :1], x)
    cond = Conditioning(torch.zeros(2, 4, 8), torch.ones(2, 4, dtype=torch.bool), torch.zeros(2, 8))
    with pytest.raises(ValueError, match="cond has 2 prompts"):
        log_likelihood(mixture2d, x, cond)
    with pytest.raises(ValueError, match="uint8"):
        dequantize(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="1-D"):
        bits_per_dim(torch.zeros(2, 3), 3)
    with pytest.raises(ValueError, match="bins"):
        bits_per_dim(torch.zeros(2), 3, bins=1)
