"""The probability-flow ODE samplers on the exact 2-D mixture oracle: convergence order, adaptive
error control, exactness where the answer is known, churn seeding, callbacks and input checks."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_mixture2d
from torch import Tensor

from noisecraft.denoisers import GaussianMixtureDenoiser
from noisecraft.noise import SeededNoise
from noisecraft.samplers import SAMPLERS
from noisecraft.samplers.adaptive import ode_adaptive
from noisecraft.samplers.ode import dpmpp_2m, euler, heun, lms, lms_coefficients
from noisecraft.samplers.unipc import unipc
from noisecraft.schedules import karras

SIGMA_MIN, SIGMA_MAX = 0.05, 10.0
FIXED_STEP = {"euler": euler, "heun": heun, "lms": lms, "dpmpp_2m": dpmpp_2m, "unipc": unipc}


def rk4_reference(denoiser, x: Tensor, sigma_max: float, sigma_min: float, steps: int) -> Tensor:
    """Classical RK4 in s = log σ, where the ODE reads dx/ds = x − D(x, σ): independent of the samplers."""

    def slope(x: Tensor, s: float) -> Tensor:
        return x - denoiser(x, torch.full((x.shape[0],), math.exp(s), dtype=x.dtype))

    grid = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps + 1, dtype=torch.float64).tolist()
    for s, s_next in zip(grid[:-1], grid[1:]):
        h = s_next - s
        k1 = slope(x, s)
        k2 = slope(x + h / 2 * k1, s + h / 2)
        k3 = slope(x + h / 2 * k2, s + h / 2)
        k4 = slope(x + h * k3, s_next)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


@pytest.fixture(scope="module")
def mixture() -> GaussianMixtureDenoiser:
    return make_mixture2d()


@pytest.fixture(scope="module")
def start() -> Tensor:
    """16 fixed starting points x = σ_max·ε, float64. [16, 2]"""
    return torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * SIGMA_MAX


@pytest.fixture(scope="module")
def reference(mixture, start) -> Tensor:
    """The ODE solution at σ_min (800 RK4 steps: error ~1e-10, far below any error measured here)."""
    return rk4_reference(mixture, start, SIGMA_MAX, SIGMA_MIN, 800)


def at_sigma_min(sampler, denoiser, x: Tensor, steps: int, **options) -> Tensor:
    """The sample on arrival at the last nonzero σ of karras(steps, σ_min, σ_max).

    The final step σ_min → 0 is no ODE step (the slope is singular at 0; samplers jump to D), so
    the order is measured where the ODE still holds.
    """
    sigmas = karras(steps, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)
    seen = {}
    sampler(denoiser, x, sigmas, callback=lambda s: seen.setdefault(s.sigma_next, s.x), **options)
    return seen[sigmas[-2].item()]


def test_reference_integrator_is_exact_on_a_gaussian():
    """RK4 against the closed form for one Gaussian: each eigen-direction scales by sqrt((λ+σ²)/(λ+σ0²))."""
    gaussian = GaussianMixtureDenoiser(torch.tensor([[0.5, -1.0]]), torch.tensor([[[0.3, 0.1], [0.1, 0.2]]]))
    x0 = torch.tensor([[4.0, -7.0], [-9.0, 2.0]], dtype=torch.float64)
    lam, u = gaussian.eigvals[0], gaussian.eigvecs[0]  # [2], [2, 2]
    scale = ((lam + SIGMA_MIN**2) / (lam + SIGMA_MAX**2)).sqrt()
    exact = gaussian.means + ((x0 - gaussian.means) @ u * scale) @ u.T
    torch.testing.assert_close(
        rk4_reference(gaussian, x0, SIGMA_MAX, SIGMA_MIN, 800), exact, rtol=0, atol=1e-10
    )


@pytest.mark.parametrize("name", list(FIXED_STEP))
def test_exact_when_the_denoiser_is_constant(name: str):
    """Data at one point μ: D ≡ μ and the ODE solution x_σ = μ + (σ/σ_0)(x_0 − μ) is linear in σ and
    in e^(−t); every sampler must follow it exactly, step by step."""
    mu = torch.tensor([[0.7, -0.3]])
    point = GaussianMixtureDenoiser(mu, torch.zeros(1, 2, 2))
    sigmas = karras(7, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)
    x0 = torch.tensor([[3.0, -8.0], [5.0, 1.0]], dtype=torch.float64)
    steps = []
    FIXED_STEP[name](point, x0, sigmas, callback=steps.append)
    for step in steps:
        exact = mu + step.sigma_next / SIGMA_MAX * (x0 - mu)
        torch.testing.assert_close(step.x, exact.double(), rtol=0, atol=1e-12)


def test_heun_churn_is_exact_on_a_point_mass():
    """EDM Alg. 2 with D ≡ μ: churn x̂ = x + s_noise·sqrt(σ̂² − σ²)·z where s_tmin ≤ σ ≤ s_tmax, then the
    Heun step is exact, x' = μ + (σ'/σ̂)(x̂ − μ); z replayed from a generator with the same seed."""
    mu = torch.tensor([[0.7, -0.3]], dtype=torch.float64)
    point = GaussianMixtureDenoiser(mu, torch.zeros(1, 2, 2))
    sigmas = karras(5, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)  # 10, 3.3, 0.85, 0.19, 0.05, 0
    churn = {"s_churn": 2.0, "s_tmin": 0.1, "s_tmax": 5.0, "s_noise": 1.003}  # churns steps 1, 2, 3
    x = torch.tensor([[3.0, -8.0], [5.0, 1.0]], dtype=torch.float64)
    steps = []
    heun(point, x, sigmas, generator=torch.Generator().manual_seed(3), callback=steps.append, **churn)
    replay = torch.Generator().manual_seed(3)
    for i, step in enumerate(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = min(churn["s_churn"] / 5, 2**0.5 - 1) if 0.1 <= sigma <= 5.0 else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            z = torch.randn(x.shape, generator=replay, dtype=torch.float64)
            x = x + churn["s_noise"] * (sigma_hat**2 - sigma**2).sqrt() * z
        x = mu + sigma_next / sigma_hat * (x - mu)
        torch.testing.assert_close(step.x, x, rtol=0, atol=1e-12)


# Expected order and the band it must fall in. Euler 1, Heun and DPM-Solver++(2M) 2, UniPC-p p + 1
# through its corrector. LMS and UniPC-3 start with lower-order steps, which caps their asymptotic
# order at 2 and 3; those first steps are at large σ where the path is nearly straight, so at
# practical step counts they show more (≈3.1–3.5 and ≈3.1–3.4 here): bands allow both.
ORDERS = [
    ("euler", euler, {}, (0.8, 1.3)),
    ("heun", heun, {}, (1.7, 2.4)),
    ("dpmpp_2m", dpmpp_2m, {}, (1.7, 2.4)),
    ("lms", lms, {}, (1.8, 4.5)),
    ("unipc_order2", unipc, {"order": 2}, (2.5, 3.5)),
    ("unipc_order3", unipc, {"order": 3}, (2.5, 4.5)),
]


@pytest.mark.parametrize("name, sampler, options, band", ORDERS, ids=[case[0] for case in ORDERS])
def test_convergence_order(name, sampler, options, band, mixture, start, reference):
    """Errors at σ_min for n = 32, 64, 128 karras steps fall like n^(−order).

    The order is log2 of the error ratio per doubling, per starting point, then the median over the
    16 points: about one start in 16 lies near the boundary between two modes' basins, where the
    path is exponentially sensitive and reaches the asymptotic regime only at far more steps
    (Euler's ratio there is still ≈0.5 at 512 → 1024 steps) — that measures the trajectory, not
    the method. Every point's error must still shrink.
    """
    errors = torch.stack(
        [(at_sigma_min(sampler, mixture, start, n, **options) - reference).norm(dim=1) for n in (32, 64, 128)]
    )  # [3, 16]
    orders = (errors[:-1] / errors[1:]).log2().median(dim=1).values  # [2] n→2n, 2n→4n
    assert (band[0] <= orders).all() and (orders <= band[1]).all(), f"{name}: orders {orders.tolist()}"
    assert (errors[-1] < errors[0]).all()


def test_higher_order_is_more_accurate(mixture, start, reference):
    """At 64 steps: Euler > DPM-Solver++(2M) > UniPC-2 > UniPC-3 in worst-case error."""
    samplers = [(euler, {}), (dpmpp_2m, {}), (unipc, {"order": 2}), (unipc, {"order": 3})]
    errors = [(at_sigma_min(s, mixture, start, 64, **o) - reference).abs().max().item() for s, o in samplers]
    assert errors == sorted(errors, reverse=True), errors


def test_lms_coefficients_integrate_polynomials_exactly():
    """Σ_j c_j·p(σ_j) = ∫_a^b p for every polynomial p of degree < the number of nodes."""
    nodes, a, b = [2.0, 3.5, 5.0, 9.0], 2.0, 1.2
    coeffs = lms_coefficients(nodes, a, b)
    for k in range(len(nodes)):
        exact = (b ** (k + 1) - a ** (k + 1)) / (k + 1)
        assert sum(c * s**k for c, s in zip(coeffs, nodes)) == pytest.approx(exact, rel=1e-13)


# ---------------------------------------------------------------------------------------------
# The adaptive solver.


def adaptive(mixture, x: Tensor, tol: float, **kwargs) -> tuple[Tensor, list, dict]:
    """Run ode_adaptive on karras(4, …) (only its ends matter); return (result, steps, info)."""
    steps, info = [], {}
    sigmas = karras(4, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)
    out = ode_adaptive(mixture, x, sigmas, rtol=tol, atol=tol, callback=steps.append, info=info, **kwargs)
    return out, steps, info


def test_ode_adaptive_reaches_reference_within_tolerance(mixture, start, reference):
    """Errors at σ_min track the tolerance: the typical point within 2·tol, the worst within 100·tol.

    Error control is local: each step's error is kept under tol, and the flow carries those errors
    on, stretching them where a path passes near the boundary between two basins (the worst point
    here by ~20–50×). Tightening tol 1000× must cut the worst error by at least 100×.
    """
    worst = []
    for tol in (1e-5, 1e-8):
        out, steps, _ = adaptive(mixture, start, tol)
        errors = (steps[-2].x - reference).norm(dim=1)  # the last ODE step left every sample at σ_min
        assert errors.median() <= 2 * tol and errors.max() <= 100 * tol, (tol, errors.tolist())
        torch.testing.assert_close(out, mixture(steps[-2].x, torch.full((16,), SIGMA_MIN).double()))
        worst.append(errors.max().item())
    assert worst[1] <= worst[0] / 100


def test_ode_adaptive_spends_fewer_evaluations_at_looser_tolerance(mixture, start):
    nfe = [adaptive(mixture, start, tol)[2]["nfe"] for tol in (1e-3, 1e-5, 1e-8)]
    assert nfe[0] < nfe[1] < nfe[2], nfe


def test_ode_adaptive_is_batch_independent(mixture, start):
    """Each sample controls its own steps: alone or in a batch, the same steps and the same result."""
    batch, _, info = adaptive(mixture, start[:4], 1e-4)
    for b in range(4):
        alone, _, info_alone = adaptive(mixture, start[b : b + 1], 1e-4)
        torch.testing.assert_close(alone, batch[b : b + 1], rtol=0, atol=1e-12)
        assert info_alone["accepted"] == [info["accepted"][b]]
        assert info_alone["rejected"] == [info["rejected"][b]]


def test_ode_adaptive_callback_and_max_steps(mixture, start):
    out, steps, info = adaptive(mixture, start[:1], 1e-5)
    assert [s.index for s in steps] == list(range(info["accepted"][0] + 1))  # accepted steps + final
    assert steps[0].sigma == pytest.approx(SIGMA_MAX) and steps[-2].sigma_next == pytest.approx(SIGMA_MIN)
    assert all(s.sigma_next < s.sigma for s in steps)
    assert steps[-1].sigma_next == 0 and steps[-1].x is out
    assert info["nfe"] == 1 + 6 * (info["accepted"][0] + info["rejected"][0]) + 1  # FSAL: 6 per attempt
    with pytest.raises(RuntimeError, match="max_steps=3"):
        adaptive(mixture, start[:1], 1e-8, max_steps=3)


# ---------------------------------------------------------------------------------------------
# Churn, callbacks, registry and input checks.


def test_heun_churn_is_seeded(mixture, start):
    sigmas = karras(10, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)

    def run(seed: int | None, s_churn: float) -> Tensor:
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        return heun(mixture, start, sigmas, generator=gen, s_churn=s_churn)

    torch.testing.assert_close(run(1, 5.0), run(1, 5.0), rtol=0, atol=0)
    assert (run(1, 5.0) - run(2, 5.0)).abs().max() > 1e-2
    assert (run(1, 5.0) - run(1, 0.0)).abs().max() > 1e-2
    torch.testing.assert_close(run(1, 0.0), run(None, 0.0), rtol=0, atol=0)  # no churn, no noise drawn
    # One generator per sample: a sample's result does not depend on its batch.
    batch = heun(mixture, start[:3], sigmas, generator=SeededNoise([10, 11, 12]), s_churn=5.0)
    alone = heun(mixture, start[1:2], sigmas, generator=SeededNoise([11]), s_churn=5.0)
    torch.testing.assert_close(batch[1:2], alone)


@pytest.mark.parametrize("name", list(FIXED_STEP))
def test_callback_once_per_step(name: str, mixture, start):
    sigmas = karras(6, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)
    steps = []
    out = FIXED_STEP[name](mixture, start[:2], sigmas, callback=steps.append)
    assert [s.index for s in steps] == list(range(6)) and all(s.total == 6 for s in steps)
    assert [s.sigma for s in steps] == sigmas[:-1].tolist()
    assert [s.sigma_next for s in steps] == sigmas[1:].tolist()
    assert steps[-1].x is out and all(s.denoised.shape == out.shape for s in steps)


def test_registered():
    for name, fn in [*FIXED_STEP.items(), ("ode_adaptive", ode_adaptive)]:
        assert SAMPLERS[name] is fn


@pytest.mark.parametrize("name", [*FIXED_STEP, "ode_adaptive"])
def test_bad_inputs_raise(name: str, mixture):
    sampler = SAMPLERS[name]
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="end in 0"):
        sampler(mixture, x, torch.tensor([2.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="batch"):
        sampler(mixture, torch.zeros(2), karras(3, 0.1, 1.0))


@pytest.mark.parametrize(
    "sampler, options",
    [(lms, {"order": 0}), (unipc, {"order": 4}), (heun, {"s_churn": -1.0}), (ode_adaptive, {"rtol": 0.0})]
    + [(ode_adaptive, {"max_steps": 0})],
)
def test_bad_options_raise(sampler, options, mixture):
    with pytest.raises(ValueError):
        sampler(mixture, torch.zeros(2, 2), karras(3, 0.1, 1.0), **options)
