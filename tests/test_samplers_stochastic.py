"""Stochastic samplers: seeded reproducibility, batch independence, and their steps in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import ToyEpsNet, make_mixture2d
from torch import Tensor

from noisecraft.denoisers import DiscreteVPDenoiser, GaussianMixtureDenoiser
from noisecraft.noise import SeededNoise
from noisecraft.samplers import SAMPLERS, Step
from noisecraft.samplers.base import noise_like
from noisecraft.schedules import karras, vp_alphas_cumprod, vp_discrete

# (name, options) of every sampler run that draws noise; heun only with churn (if registered).
STOCHASTIC = [
    ("euler_ancestral", {}),
    ("euler_ancestral", {"eta": 0.5, "s_noise": 0.9}),
    ("ddim", {"eta": 1.0}),
    ("ddim", {"eta": 0.3}),
    ("ddpm", {}),
    ("dpmpp_2s_ancestral", {}),
    ("dpmpp_2m_sde", {}),
    ("dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.5}),
    ("dpmpp_3m_sde", {}),
    ("pc", {}),
    ("pc", {"corrector_steps": 2, "snr": 0.1}),
]
if "heun" in SAMPLERS:
    STOCHASTIC.append(("heun", {"s_churn": 5.0}))
IDS = [name + "".join(f"-{k}={v}" for k, v in opts.items()) for name, opts in STOCHASTIC]


@pytest.fixture(scope="module")
def vp_model() -> DiscreteVPDenoiser:
    """An ε-network on a discrete linear-β VP schedule, float64."""
    return DiscreteVPDenoiser(ToyEpsNet().double(), vp_alphas_cumprod("linear", 1000)).double()


def start(batch: int, sigma_max: float, seed: int = 0) -> Tensor:
    """Starting noise N(0, σ_max²) of shape [B, 3, 4, 4], float64."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 4, 4, generator=g, dtype=torch.float64) * sigma_max


def seeded(*seeds: int) -> SeededNoise:
    return SeededNoise(seeds)


def run(name: str, opts: dict, model, x: Tensor, generator, steps: int = 8) -> Tensor:
    sigmas = vp_discrete(steps, vp_alphas_cumprod("linear", 1000), dtype=torch.float64)
    return SAMPLERS[name](model, x, sigmas, generator=generator, **opts)


SIGMA_MAX = float(vp_discrete(8, vp_alphas_cumprod("linear", 1000))[0])


# ---------------------------------------------------------------------------------------------
# Reproducibility and batch independence.


@pytest.mark.parametrize(("name", "opts"), STOCHASTIC, ids=IDS)
def test_same_seed_same_output_different_seed_different(name: str, opts: dict, vp_model) -> None:
    x = start(2, SIGMA_MAX)
    a = run(name, opts, vp_model, x, torch.Generator().manual_seed(1))
    b = run(name, opts, vp_model, x, torch.Generator().manual_seed(1))
    c = run(name, opts, vp_model, x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


@pytest.mark.parametrize(("name", "opts"), STOCHASTIC, ids=IDS)
def test_batch_independence(name: str, opts: dict, vp_model) -> None:
    """Row 2 of a batch of 4 drawn with generators g(10..13) is row 0 of a batch of 1 drawn with g(12)."""
    x = start(4, SIGMA_MAX)
    batch = run(name, opts, vp_model, x, seeded(10, 11, 12, 13))
    alone = run(name, opts, vp_model, x[2:3], seeded(12))
    # float64; only the network's batched vs single-row arithmetic may differ, in the last bits
    torch.testing.assert_close(batch[2:3], alone, rtol=0, atol=1e-10)
    other = run(name, opts, vp_model, x[2:3], seeded(11))
    assert (other - alone).abs().max() > 1e-3  # the row really depends on its own generator


# ---------------------------------------------------------------------------------------------
# Deterministic limits: η = 0 is the probability-flow ODE.


def test_eta_zero_is_euler(vp_model) -> None:
    x = start(2, SIGMA_MAX)
    reference = run("euler", {}, vp_model, x, None)
    for name in ("euler_ancestral", "ddim"):
        torch.testing.assert_close(
            run(name, {"eta": 0.0}, vp_model, x, None), reference, rtol=1e-12, atol=1e-10
        )
    # and ddim's default η is 0
    torch.testing.assert_close(run("ddim", {}, vp_model, x, None), reference, rtol=1e-12, atol=1e-10)


@pytest.mark.skipif("dpmpp_2m" not in SAMPLERS, reason="dpmpp_2m not registered")
def test_dpmpp_2m_sde_at_eta_zero_is_dpmpp_2m(vp_model) -> None:
    x = start(2, SIGMA_MAX)
    ode = run("dpmpp_2m", {}, vp_model, x, None)
    sde = run("dpmpp_2m_sde", {"eta": 0.0}, vp_model, x, None)
    torch.testing.assert_close(sde, ode, rtol=1e-12, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# One step in closed form: the DDPM posterior q(x_σ' | x_σ, x0), written in VP terms (Ho et al. eq. 7).


def vp_posterior(x: Tensor, x0: Tensor, sigma: float, sigma_next: float) -> tuple[Tensor, float]:
    """Mean and std of q(x_σ' | x_σ, x0) on the σ scale, from ᾱ, ᾱ' and eqs. 6–7 of Ho et al. 2020."""
    abar, abar_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
    alpha = abar / abar_next
    beta = 1 - alpha
    x_vp = x * math.sqrt(abar)
    mean_vp = (
        math.sqrt(abar_next) * beta / (1 - abar) * x0 + math.sqrt(alpha) * (1 - abar_next) / (1 - abar) * x_vp
    )
    var_vp = (1 - abar_next) / (1 - abar) * beta
    scale = math.sqrt(1 + sigma_next**2)  # back to x_σ' = x_vp·sqrt(1 + σ'²)
    return mean_vp * scale, math.sqrt(var_vp) * scale


POSTERIOR_STEPS = [
    ("ddpm", {}),
    ("ddim", {"eta": 1.0}),
    ("euler_ancestral", {}),
    ("dpmpp_2m_sde", {}),  # its first step has no history: first order
    ("dpmpp_3m_sde", {}),
]


def test_ddim_eta_one_ddpm_and_euler_ancestral_are_one_chain(vp_model) -> None:
    """Three writings of the posterior step, one noise stream: the whole trajectories coincide."""
    x = start(2, SIGMA_MAX)
    chain = run("ddpm", {}, vp_model, x, torch.Generator().manual_seed(9))
    for name, opts in (("ddim", {"eta": 1.0}), ("euler_ancestral", {})):
        other = run(name, opts, vp_model, x, torch.Generator().manual_seed(9))
        torch.testing.assert_close(other, chain, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize(("name", "opts"), POSTERIOR_STEPS, ids=[n for n, _ in POSTERIOR_STEPS])
@pytest.mark.parametrize(("sigma", "sigma_next"), [(5.0, 2.0), (0.8, 0.3)])
def test_one_step_is_the_ddpm_posterior(name: str, opts: dict, sigma: float, sigma_next: float) -> None:
    """x' = mean + std·z with z exactly the generator's first draw: the step is q(x_σ' | x_σ, x̂0)."""
    mixture = make_mixture2d()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigma
    sigmas = torch.tensor([sigma, sigma_next, 0.0], dtype=torch.float64)
    steps: list[Step] = []
    SAMPLERS[name](
        mixture, x, sigmas, generator=torch.Generator().manual_seed(5), callback=steps.append, **opts
    )
    mean, std = vp_posterior(x, mixture(x, torch.tensor(sigma, dtype=torch.float64)), sigma, sigma_next)
    z = (steps[0].x - mean) / std
    expected = noise_like(x, torch.Generator().manual_seed(5))
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-9)
    assert steps[0].sigma == sigma and steps[0].sigma_next == sigma_next
    # the last step lands on x̂0 (Euler's x + (x − x̂0)/σ·(0 − σ) up to rounding), with no noise
    torch.testing.assert_close(steps[-1].x, steps[-1].denoised, rtol=0, atol=1e-12)


def test_pc_predictor_step_in_closed_form() -> None:
    """Without corrector: x' = x + (σ² − σ'²)·(D − x)/σ² + sqrt(σ² − σ'²)·z (Song et al. 2021, eq. 47)."""
    mixture = make_mixture2d()
    sigma, sigma_next = 3.0, 1.0
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigma
    steps: list[Step] = []
    sigmas = torch.tensor([sigma, sigma_next, 0.0], dtype=torch.float64)
    SAMPLERS["pc"](
        mixture,
        x,
        sigmas,
        generator=torch.Generator().manual_seed(5),
        callback=steps.append,
        corrector_steps=0,
    )
    score = (mixture(x, torch.tensor(sigma, dtype=torch.float64)) - x) / sigma**2
    z = (steps[0].x - x - (sigma**2 - sigma_next**2) * score) / math.sqrt(sigma**2 - sigma_next**2)
    torch.testing.assert_close(z, noise_like(x, torch.Generator().manual_seed(5)), rtol=0, atol=1e-9)


def test_langevin_corrector_stationary_variance() -> None:
    """On a Gaussian p_σ = N(μ, v·I), Langevin with step ε converges to variance v / (1 − ε/(2v)).

    That is the exact stationary law of x' = x + ε(μ − x)/v + sqrt(2ε)·z; with ε = 2(snr·σ)² it
    checks the corrector's step size and its noise scale, starting from 4× too wide a spread.
    """
    from noisecraft.samplers.pc import langevin_step

    s0, sigma, snr = 0.5, 2.0, 0.3
    mixture = GaussianMixtureDenoiser(torch.tensor([[1.0, -1.0]]), torch.eye(2)[None] * s0**2)
    v = s0**2 + sigma**2
    eps = 2 * (snr * sigma) ** 2
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([1.0, -1.0]) + 2 * math.sqrt(v) * torch.randn(20000, 2, generator=g, dtype=torch.float64)
    for _ in range(80):  # contraction (1 − ε/v) per step: 0.85⁸⁰ ≈ 2e-6
        x = langevin_step(mixture, x, torch.tensor(sigma, dtype=torch.float64), None, g, snr)
    expected = v / (1 - eps / (2 * v))  # 4.25 / 0.915: 9% wider than p_σ, the known O(ε) bias
    # 40000 squared deviates: the relative standard error of the variance is sqrt(2/40000) = 0.7%
    assert abs(x.var(0).mean() / expected - 1) < 0.03
    assert abs(x.var(0).mean() / v - 1) > 0.06  # and it is measurably not v itself
    torch.testing.assert_close(x.mean(0), torch.tensor([1.0, -1.0], dtype=torch.float64), atol=0.05, rtol=0)


# ---------------------------------------------------------------------------------------------
# Multistep coefficients: exact on a denoiser that is a polynomial in λ = −log σ.


def polynomial_denoiser(coeffs: list[float]):
    """D(x, σ) = Σ c_k λ^k, independent of x: the ODE then integrates in closed form."""

    def denoiser(x: Tensor, sigma: Tensor, cond=None) -> Tensor:
        lam = -sigma.log().reshape(-1, *([1] * (x.ndim - 1)))
        return sum(c * lam**k for k, c in enumerate(coeffs)).expand_as(x).clone()

    return denoiser


def exact_step(x: Tensor, sigma: float, sigma_next: float, coeffs: list[float], eta: float) -> Tensor:
    """Mean of the η-SDE step: e^{−(1+η)h}·x + ∫ (1+η)·e^{−(1+η)(λ'−u)}·D(u) du (Gauss–Legendre, exact)."""
    lo, hi = -math.log(sigma), -math.log(sigma_next)
    nodes, weights = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(40))  # [40] float64
    u = (hi - lo) / 2 * nodes + (hi + lo) / 2
    k = 1 + eta
    integrand = k * torch.exp(-k * (hi - u)) * sum(c * u**j for j, c in enumerate(coeffs))
    return math.exp(-k * (hi - lo)) * x + (hi - lo) / 2 * (weights * integrand).sum()


@pytest.mark.parametrize(
    ("name", "opts", "coeffs", "exact_from"),
    [
        ("dpmpp_2m_sde", {"solver_type": "heun"}, [0.3, 0.7], 1),  # φ₂ slope: exact for linear x̂0
        ("dpmpp_3m_sde", {}, [0.3, 0.7, -0.4], 2),  # exact for quadratic x̂0 once it has two past steps
    ],
    ids=["2m-heun", "3m"],
)
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_multistep_is_exact_on_polynomials(
    name: str, opts: dict, coeffs: list, exact_from: int, eta: float
) -> None:
    """s_noise = 0 leaves the SDE's mean step, which must be exact from step ``exact_from`` on."""
    sigmas = karras(8, 0.1, 10.0, dtype=torch.float64)
    x0 = torch.full((1, 1), 3.0, dtype=torch.float64)
    steps: list[Step] = []
    SAMPLERS[name](
        polynomial_denoiser(coeffs), x0, sigmas, eta=eta, s_noise=0.0, callback=steps.append, **opts
    )
    xs = [x0] + [s.x for s in steps]
    for i in range(exact_from, len(sigmas) - 2):
        expected = exact_step(xs[i], float(sigmas[i]), float(sigmas[i + 1]), coeffs, eta)
        torch.testing.assert_close(xs[i + 1], expected, rtol=0, atol=1e-10)
    # and the startup steps are not exact: the test can fail
    first = exact_step(xs[0], float(sigmas[0]), float(sigmas[1]), coeffs, eta)
    assert (xs[1] - first).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("name", "opts", "order"),
    [
        ("dpmpp_2s_ancestral", {"eta": 0.0}, 2),
        ("dpmpp_2m_sde", {"eta": 0.0}, 2),
        ("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}, 2),
        ("euler", {}, 1),  # the control: a first-order method shows order 1 here
    ],
    ids=["2s", "2m-midpoint", "2m-heun", "euler"],
)
def test_deterministic_limit_convergence_order(name: str, opts: dict, order: int) -> None:
    """At η = 0, halving the λ step divides the error at σ = 0.1 by 2^order (D quadratic in λ)."""
    coeffs = [0.3, 0.7, -0.4]
    x0 = torch.full((1, 1), 3.0, dtype=torch.float64)
    exact = exact_step(x0, 10.0, 0.1, coeffs, 0.0)
    errors = []
    for intervals in (20, 40):  # uniform in λ from σ = 10 to 0.1, then the final step to 0
        sigmas = torch.cat(
            [torch.logspace(1, -1, intervals + 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)]
        )
        steps: list[Step] = []
        SAMPLERS[name](polynomial_denoiser(coeffs), x0, sigmas, callback=steps.append, **opts)
        errors.append(float((steps[-2].x - exact).abs()))
    assert 2**order * 0.85 < errors[0] / errors[1] < 2**order * 1.15  # measured: 3.99, 3.99, 4.08, 1.94
