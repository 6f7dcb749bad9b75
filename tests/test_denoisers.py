"""noisecraft.denoisers: the Gaussian-mixture oracle against a plain reference, and every adapter's algebra.

The adapters are checked by building "networks" out of the exact oracle D*: each net undoes its
family's input scaling and time variable, asks D* for x̂0 and returns what a perfect ε-, v-, x0-,
velocity- or EDM-F-network would. Wrapped in the adapter, it must give D* back.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from noisecraft.conditioning import Conditioning
from noisecraft.denoisers import (
    ContinuousVPDenoiser,
    DiscreteVPDenoiser,
    EDMPrecond,
    FixedBatch,
    FlowDenoiser,
    GaussianMixtureDenoiser,
    score,
)
from noisecraft.schedules import sigma_at_timestep, vp_alphas_cumprod, vp_sigmas

F64 = torch.float64
SIGMAS = [1e-3, 0.05, 0.5, 2.0, 100.0]


def random_mixture(k: int, d: int, seed: int, singular: bool = False) -> tuple[torch.Tensor, ...]:
    """K random means, random SPD covariances (the last one rank 2 if ``singular``), random weights."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g, dtype=F64) * 1.5
    a = torch.randn(k, d, d, generator=g, dtype=F64)
    covs = a @ a.mT / d + 0.05 * torch.eye(d, dtype=F64)  # [K, d, d]
    if singular:
        b = torch.randn(d, 2, generator=g, dtype=F64)
        covs[-1] = b @ b.T / 2
    weights = torch.rand(k, generator=g, dtype=F64) + 0.2
    return means, covs, weights / weights.sum()


def reference_components(means, covs, weights, x: torch.Tensor, sigma: float):
    """Per component: log w_k N(x; μ_k, Σ_k + σ²I) [B, K] and E[x0 | x, k] [B, K, d], done plainly."""
    eye = torch.eye(means.shape[1], dtype=F64)
    log_joint, posts = [], []
    for mean, cov, weight in zip(means, covs, weights):
        noised = cov + sigma**2 * eye
        log_joint.append(weight.log() + MultivariateNormal(mean, covariance_matrix=noised).log_prob(x))
        posts.append(mean + (cov @ torch.linalg.solve(noised, (x - mean).T)).T)  # μ + Σ(Σ + σ²I)⁻¹(x − μ)
    return torch.stack(log_joint, 1), torch.stack(posts, 1)


def reference_denoise(means, covs, weights, x: torch.Tensor, sigma: float) -> torch.Tensor:
    log_joint, posts = reference_components(means, covs, weights, x, sigma)
    return (torch.softmax(log_joint, 1)[..., None] * posts).sum(1)  # [B, d]


def noised_points(mixture: GaussianMixtureDenoiser, sigma: float, seed: int) -> torch.Tensor:
    """Noised draws from the mixture plus a few far-away points: [24, d] float64."""
    g = torch.Generator().manual_seed(seed)
    x0 = mixture.sample(20, generator=g).double()
    near = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=F64)
    far = torch.randn(4, mixture.dim, generator=g, dtype=F64) * 6
    return torch.cat([near, far])


# ----------------------------------------------------------------------------------------------
# GaussianMixtureDenoiser: the exact oracle.


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("k, d, singular", [(3, 2, False), (4, 5, False), (3, 5, True)])
def test_mixture_matches_reference(k: int, d: int, singular: bool, sigma: float) -> None:
    means, covs, weights = random_mixture(k, d, seed=10 * k + d, singular=singular)
    mixture = GaussianMixtureDenoiser(means, covs, weights)
    x = noised_points(mixture, sigma, seed=1)
    expected = reference_denoise(means, covs, weights, x, sigma)
    # float64 throughout; eigh vs solve differ by ≈ cond(Σ + σ²I)·1e-16 ≤ 1e-10 (rank-2 cov at σ = 1e-3)
    torch.testing.assert_close(mixture(x, sigma), expected, rtol=1e-7, atol=1e-8)
    log_p = torch.logsumexp(reference_components(means, covs, weights, x, sigma)[0], 1)
    torch.testing.assert_close(mixture.log_prob(x, sigma), log_p, rtol=1e-9, atol=1e-9)


def test_mixture_fixture_matches_reference(mixture2d: GaussianMixtureDenoiser) -> None:
    x = noised_points(mixture2d, 0.3, seed=2)
    expected = reference_denoise(mixture2d.means, mixture2d.covs, mixture2d.weights, x, 0.3)
    torch.testing.assert_close(mixture2d(x, 0.3), expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("k, d", [(3, 2), (4, 5)])
def test_mixture_score_is_gradient_of_log_prob(k: int, d: int) -> None:
    """Tweedie: (D(x, σ) − x)/σ² = ∇ₓ log p_σ(x) exactly, for scalar and per-sample σ."""
    mixture = GaussianMixtureDenoiser(*random_mixture(k, d, seed=3))
    sigma = torch.tensor([0.01, 0.1, 0.5, 1.0, 3.0, 30.0], dtype=F64).repeat_interleave(4)  # [24]
    x = noised_points(mixture, 1.0, seed=4).requires_grad_(True)
    (grad,) = torch.autograd.grad(mixture.log_prob(x, sigma).sum(), x)
    torch.testing.assert_close(score(mixture, x.detach(), sigma), grad, rtol=1e-8, atol=1e-8)
    (grad,) = torch.autograd.grad(mixture.log_prob(x, 0.7).sum(), x)
    torch.testing.assert_close(score(mixture, x.detach(), 0.7), grad, rtol=1e-8, atol=1e-8)


def test_mixture_small_sigma_returns_the_input_near_data(mixture2d: GaussianMixtureDenoiser) -> None:
    x = mixture2d.sample(50, generator=torch.Generator().manual_seed(5)).double()
    x.requires_grad_(True)
    (score0,) = torch.autograd.grad(mixture2d.log_prob(x, 0.0).sum(), x)  # ∇ log p_0 at the data
    x = x.detach()
    sigma = 1e-4
    denoised = mixture2d(x, sigma)
    # D − x = σ²·∇log p_σ(x) and ∇log p_σ = ∇log p_0 + O(σ²): |D − x| ≤ σ²·max|score| ≈ 1e-8·O(100)
    assert (denoised - x).abs().max() < 1e-5
    torch.testing.assert_close((denoised - x) / sigma**2, score0, rtol=1e-3, atol=1e-3)


def test_mixture_large_sigma_returns_the_mixture_mean(mixture2d: GaussianMixtureDenoiser) -> None:
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(6), dtype=F64) * 3
    mean = (mixture2d.weights[:, None] * mixture2d.means).sum(0)  # Σ w_k μ_k
    # responsibilities → w_k and shrinkage Σ(Σ + σ²I)⁻¹ → 0, both O(|x|²/σ²) ≈ 1e-7 at σ = 1e4
    torch.testing.assert_close(mixture2d(x, 1e4), mean.expand(16, 2), rtol=0, atol=1e-6)


def test_mixture_sample_moments_and_reproducibility(mixture2d: GaussianMixtureDenoiser) -> None:
    n = 20_000
    draws = mixture2d.sample(n, generator=torch.Generator().manual_seed(7))
    assert draws.shape == (n, 2) and draws.dtype == torch.float32
    w, mu, cov = mixture2d.weights, mixture2d.means, mixture2d.covs
    mean = (w[:, None] * mu).sum(0)  # [2]
    second = (w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :])).sum(0)  # E[x xᵀ], [2, 2]
    true_cov = second - mean[:, None] * mean[None, :]
    x = draws.double()
    centred = x - x.mean(0)
    products = centred[:, :, None] * centred[:, None, :]  # [n, 2, 2]
    # 5 standard errors: of a mean, sqrt(var/n); of a covariance entry, std of the products / sqrt(n)
    assert ((x.mean(0) - mean).abs() < 5 * (true_cov.diagonal() / n).sqrt()).all()
    assert ((products.mean(0) - true_cov).abs() < 5 * products.std(0) / math.sqrt(n)).all()
    again = mixture2d.sample(n, generator=torch.Generator().manual_seed(7))
    other = mixture2d.sample(n, generator=torch.Generator().manual_seed(8))
    assert torch.equal(draws, again) and not torch.equal(draws, other)


def test_mixture_accepts_image_shaped_input() -> None:
    mixture = GaussianMixtureDenoiser(*random_mixture(2, 12, seed=9))  # d = C·H·W = 2·2·3
    x = torch.randn(4, 2, 2, 3, generator=torch.Generator().manual_seed(10))  # [B, C, H, W] float32
    sigma = torch.tensor([0.1, 0.5, 1.0, 4.0])
    out = mixture(x, sigma)
    assert out.shape == x.shape and out.dtype == torch.float32
    flat = mixture(x.reshape(4, 12).double(), sigma)
    torch.testing.assert_close(out, flat.reshape(4, 2, 2, 3).float())
    assert mixture.log_prob(x, sigma).shape == (4,)
    with pytest.raises(ValueError, match="dimension 12"):
        mixture(torch.zeros(4, 3, 2, 3), 1.0)


def test_mixture_rejects_bad_parameters() -> None:
    means, covs = torch.zeros(2, 3), torch.eye(3).repeat(2, 1, 1)
    with pytest.raises(ValueError, match=r"means \[K, d\]"):
        GaussianMixtureDenoiser(torch.zeros(3), covs)
    with pytest.raises(ValueError, match=r"covs \[K, d, d\]"):
        GaussianMixtureDenoiser(means, torch.eye(3))
    with pytest.raises(ValueError, match=r"covs \[K, d, d\]"):
        GaussianMixtureDenoiser(means, torch.eye(2).repeat(2, 1, 1))
    for weights in ([0.5, -0.1], [0.0, 0.0], [1.0, 1.0, 1.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="non-negative"):
            GaussianMixtureDenoiser(means, covs, torch.tensor(weights))
    not_psd = covs.clone()
    not_psd[1, 2, 2] = -0.5
    with pytest.raises(ValueError, match="positive semi-definite"):
        GaussianMixtureDenoiser(means, not_psd)
    asymmetric = covs.clone()
    asymmetric[0, 0, 1] = 0.3  # eigh would read only the lower triangle and use a different Σ
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixtureDenoiser(means, asymmetric)
    with pytest.raises(ValueError, match="finite"):
        GaussianMixtureDenoiser(torch.full((2, 3), float("nan")), covs)


# ----------------------------------------------------------------------------------------------
# Adapters: perfect networks built from the oracle must give the oracle back.


def eps_and_x0(oracle: GaussianMixtureDenoiser, x_sigma: torch.Tensor, sigma: torch.Tensor):
    """x̂0 = D*(x_σ, σ) and the ε it implies, (x_σ − x̂0)/σ; σ of shape [B]."""
    x0 = oracle(x_sigma, sigma)
    return (x_sigma - x0) / sigma[:, None], x0


def vp_target(oracle, x_vp: torch.Tensor, sigma: torch.Tensor, prediction: str) -> torch.Tensor:
    """What a perfect VP network outputs at x_vp = √ᾱ·x0 + √(1−ᾱ)·ε with ᾱ = 1/(1+σ²)."""
    alpha, s = 1 / (1 + sigma**2).sqrt(), sigma / (1 + sigma**2).sqrt()  # √ᾱ, √(1−ᾱ)  [B]
    eps, x0 = eps_and_x0(oracle, x_vp / alpha[:, None], sigma)
    targets = {"eps": eps, "x0": x0, "v": alpha[:, None] * eps - s[:, None] * x0}  # v: Salimans & Ho 2022
    return targets[prediction]


def adapter_inputs(oracle: GaussianMixtureDenoiser, seed: int, sigmas: list[float]):
    sigma = torch.tensor(sigmas, dtype=F64)
    g = torch.Generator().manual_seed(seed)
    x0 = oracle.sample(len(sigmas), generator=g).double()
    return x0 + sigma[:, None] * torch.randn(x0.shape, generator=g, dtype=F64), sigma


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_discrete_vp_adapter_gives_back_the_oracle(mixture2d, prediction: str) -> None:
    alphas_cumprod = vp_alphas_cumprod("scaled_linear")
    table = vp_sigmas(alphas_cumprod)  # [1000] increasing, 0.029 … 14.6

    def net(x_in, t, cond=None):
        return vp_target(mixture2d, x_in, sigma_at_timestep(t, table), prediction)

    denoiser = DiscreteVPDenoiser(net, alphas_cumprod, prediction)
    assert (denoiser.sigma_min, denoiser.sigma_max) == (table[0].item(), table[-1].item())
    x, sigma = adapter_inputs(mixture2d, 11, [0.03, 0.1, 0.47, 1.0, 3.3, 14.0, table[500].item()])
    # only float64 rounding through σ → t → σ and the rescalings: ≈ 1e-15 relative of |x| ≤ 50
    torch.testing.assert_close(denoiser(x, sigma), mixture2d(x, sigma), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("zero_snr", [False, True])
def test_discrete_vp_adapter_passes_exact_timesteps(zero_snr: bool) -> None:
    alphas_cumprod = vp_alphas_cumprod("linear", zero_terminal_snr=zero_snr)
    table = vp_sigmas(alphas_cumprod)
    seen = []

    def net(x_in, t, cond=None):
        seen.append((x_in, t))
        return torch.zeros_like(x_in)

    denoiser = DiscreteVPDenoiser(net, alphas_cumprod, "eps")
    x = torch.ones(5, 3, dtype=F64)
    steps = torch.tensor([0, 1, 500, 998, 999])
    denoiser(x, table[steps])
    assert torch.equal(seen[-1][1], steps.double())  # a table σ is exactly its integer timestep
    expected_in = x / (1 + table[steps, None] ** 2).sqrt()  # the net sees x_vp = x_σ/√(1+σ²)
    torch.testing.assert_close(seen[-1][0], expected_in, rtol=1e-14, atol=0)
    w = torch.tensor([0.25, 0.5, 0.75, 0.1, 0.9], dtype=F64)
    lo = torch.tensor([0, 10, 500, 997, 998])
    between = (1 - w) * table[lo] + w * table[lo + 1]  # σ linear between neighbouring entries
    denoiser(x, between)
    torch.testing.assert_close(seen[-1][1], lo + w, rtol=0, atol=1e-9)


def vp_sde_sigma(t: torch.Tensor, beta_min: float = 0.1, beta_max: float = 20.0) -> torch.Tensor:
    """Song et al. 2021, VP-SDE: ᾱ(t) = exp(−½(β_max − β_min)t² − β_min t), σ = √((1 − ᾱ)/ᾱ)."""
    alpha_bar = torch.exp(-0.5 * (beta_max - beta_min) * t**2 - beta_min * t)
    return ((1 - alpha_bar) / alpha_bar).sqrt()


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_continuous_vp_adapter_gives_back_the_oracle(mixture2d, prediction: str) -> None:
    def net(x_in, t_in, cond=None):
        return vp_target(mixture2d, x_in, vp_sde_sigma(t_in / 999.0), prediction)

    denoiser = ContinuousVPDenoiser(net, prediction)
    x, sigma = adapter_inputs(mixture2d, 12, [0.01, 0.1, 0.5, 1.0, 5.0, 40.0, 150.0])
    torch.testing.assert_close(denoiser(x, sigma), mixture2d(x, sigma), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("time_scale", [1.0, 1000.0])
def test_flow_adapter_gives_back_the_oracle(mixture2d, time_scale: float) -> None:
    def net(x_t, t_in, cond=None):
        t = (t_in / time_scale)[:, None]  # [B, 1] flow time
        x_sigma = x_t / (1 - t)  # x_t = (1 − t)·x0 + t·ε = (1 − t)·x_σ
        eps, x0 = eps_and_x0(mixture2d, x_sigma, (t / (1 - t))[:, 0])
        return eps - x0  # the rectified-flow velocity dx_t/dt

    denoiser = FlowDenoiser(net, time_scale)
    x, sigma = adapter_inputs(mixture2d, 13, [0.01, 0.1, 0.5, 1.0, 5.0, 40.0, 500.0])
    torch.testing.assert_close(denoiser(x, sigma), mixture2d(x, sigma), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_edm_precond_gives_back_the_oracle(mixture2d, sigma_data: float) -> None:
    def net(x_in, c_noise, cond=None):
        sigma = (4 * c_noise).exp()  # c_noise = ¼ ln σ
        total = (sigma**2 + sigma_data**2)[:, None]
        x = x_in * total.sqrt()  # c_in = 1/√(σ² + σ_data²)
        c_skip = sigma_data**2 / total  # Karras et al. 2022, table 1
        c_out = sigma[:, None] * sigma_data / total.sqrt()
        return (mixture2d(x, sigma) - c_skip * x) / c_out  # the F a perfect network outputs

    denoiser = EDMPrecond(net, sigma_data)
    x, sigma = adapter_inputs(mixture2d, 14, [0.002, 0.05, 0.5, 1.0, 5.0, 80.0])
    torch.testing.assert_close(denoiser(x, sigma), mixture2d(x, sigma), rtol=1e-9, atol=1e-10)


def test_unknown_prediction_is_rejected_at_construction() -> None:
    with pytest.raises(ValueError, match="eps, v, x0"):
        DiscreteVPDenoiser(lambda x, t, c=None: x, vp_alphas_cumprod(), "velocity")
    with pytest.raises(ValueError, match="eps, v, x0"):
        ContinuousVPDenoiser(lambda x, t, c=None: x, "velocity")


# ----------------------------------------------------------------------------------------------
# score() and the Denoiser protocol: σ as a scalar or [B].


def test_score_with_scalar_and_batch_sigma(mixture2d) -> None:
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(15), dtype=F64)
    sigma = torch.tensor([0.2, 1.0, 5.0], dtype=F64)
    per_sample = torch.stack([(mixture2d(x[i : i + 1], sigma[i]) - x[i]) / sigma[i] ** 2 for i in range(3)])
    torch.testing.assert_close(score(mixture2d, x, sigma), per_sample[:, 0], rtol=1e-12, atol=0)
    expected = (mixture2d(x, 0.5) - x) / 0.25
    torch.testing.assert_close(score(mixture2d, x, 0.5), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(score(mixture2d, x, torch.tensor(0.5)), expected, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match=r"scalar or shape \[3\]"):
        score(mixture2d, x, torch.ones(2))


def test_score_on_image_batches() -> None:
    mixture = GaussianMixtureDenoiser(*random_mixture(2, 12, seed=16))
    x = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(17), dtype=F64)
    sigma = torch.tensor([0.3, 2.0], dtype=F64)
    flat = score(mixture, x.reshape(2, 12), sigma).reshape(x.shape)
    torch.testing.assert_close(score(mixture, x, sigma), flat, rtol=1e-12, atol=0)


def build_adapters(oracle: GaussianMixtureDenoiser) -> dict[str, torch.nn.Module]:
    """Every adapter around an arbitrary smooth net (only σ handling is under test here)."""

    def net(x_in, c_noise, cond=None):
        assert c_noise.shape == (x_in.shape[0],)  # the net always sees c_noise as [B]
        return torch.tanh(x_in) * (1 + 0.1 * c_noise[:, None].cos())

    return {
        "discrete_vp": DiscreteVPDenoiser(net, vp_alphas_cumprod(), "v"),
        "continuous_vp": ContinuousVPDenoiser(net, "eps"),
        "flow": FlowDenoiser(net),
        "edm": EDMPrecond(net),
        "mixture": oracle,
    }


@pytest.mark.parametrize("name", ["discrete_vp", "continuous_vp", "flow", "edm", "mixture"])
def test_every_denoiser_accepts_scalar_sigma(mixture2d, name: str) -> None:
    denoiser = build_adapters(mixture2d)[name]
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(18), dtype=F64)
    batch = denoiser(x, torch.full((4,), 0.8, dtype=F64))
    assert batch.shape == x.shape
    torch.testing.assert_close(denoiser(x, 0.8), batch, rtol=0, atol=0)
    torch.testing.assert_close(denoiser(x, torch.tensor(0.8, dtype=F64)), batch, rtol=0, atol=0)


def test_fixed_batch_calls_with_exactly_rows_samples_and_returns_the_real_ones():
    calls = []

    def denoiser(x, sigma, cond=None):  # row-wise: x·σ + the prompt's pooled value
        calls.append(x.shape[0])
        return x * sigma[:, None] + cond.pooled[:, :1]

    x, sigma = torch.randn(5, 3), torch.linspace(0.5, 2.5, 5)
    cond = Conditioning(torch.zeros(5, 2, 4), torch.ones(5, 2, dtype=torch.bool), torch.arange(5.0)[:, None])
    out = FixedBatch(denoiser, rows=4)(x, sigma, cond)
    assert calls == [4, 4] and out.shape == (5, 3)
    torch.testing.assert_close(out, x * sigma[:, None] + torch.arange(5.0)[:, None])
    calls.clear()
    FixedBatch(denoiser, rows=4)(x[:4], 1.0, cond[:4])  # a scalar σ is broadcast; one full chunk
    assert calls == [4]
    with pytest.raises(ValueError, match="3 prompts for 5 samples"):
        FixedBatch(denoiser, rows=4)(x, sigma, cond[:3])
    with pytest.raises(ValueError, match="rows must be at least 1"):
        FixedBatch(denoiser, rows=0)
