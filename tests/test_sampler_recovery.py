"""Every registered sampler, driven by the exact mixture denoiser, must recover the mixture.

Checks, on N samples: component weights, per-component means and covariances (each within 4
standard errors of the truth), and a two-sample energy distance to true samples below the 99th
percentile of its null distribution, which is computed here from true samples alone.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ODEMap, make_mixture2d
from torch import Tensor

from noisecraft.denoisers import GaussianMixtureDenoiser
from noisecraft.samplers import SAMPLERS
from noisecraft.schedules import karras

N = 4000  # samples for the moment checks: the weight of a 20% component has standard error 0.6%
N_ENERGY = 2000  # of them, used in the energy test (its cost grows as N²)
Z_MAX = 4.0  # |estimate − truth| / standard error; 18 statistics per sampler, P(|z| > 4) ≈ 6e-5 each
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0  # σ_max ≫ data scale (≈ 1.5): N(0, σ_max²) ≈ p_σmax

# Steps enough that discretisation bias is well under one standard error (measured: the max |z|
# over the 18 statistics is ≤ 3 at these counts, and euler needs 200 to bring its mean bias < 1.5 SE).
STEPS = {
    "euler": 200,  # first order, one evaluation per step
    "euler_ancestral": 200,
    "ddim": 200,
    "ddpm": 200,
    "pc": 300,  # first-order predictor (Euler–Maruyama) + one corrector evaluation per step
    "heun": 40,  # second order, two evaluations per step
    "dpmpp_2s_ancestral": 40,
    "lms": 60,  # multistep, one evaluation per step
    "dpmpp_2m": 60,
    "unipc": 60,
    "dpmpp_2m_sde": 60,
    "dpmpp_3m_sde": 60,
    "ode_adaptive": 20,  # chooses its own steps; only σ_max and σ_min matter
    "consistency": 3,  # exact with an exact consistency function (ODEMap): noise re-injected at σ_1
}
DEFAULT_STEPS = 200  # a sampler added later: assume first order


def energy_distance(a: Tensor, b: Tensor, bb_sum: Tensor | None = None) -> float:
    """Székely's two-sample energy statistic 2E|X−Y| − E|X−X'| − E|Y−Y'| (U-statistics), ≥ 0 in mean."""
    n, m = len(a), len(b)
    bb = torch.cdist(b, b).sum() if bb_sum is None else bb_sum
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).sum() / (n * (n - 1)) - bb / (m * (m - 1)))


def energy_null_quantile(pool: Tensor, q: float = 0.99, draws: int = 200, seed: int = 0) -> float:
    """The q-quantile of the energy statistic between two independent true-sample sets.

    A random even split of 2n i.i.d. true samples is exactly two independent sets of n; one distance
    matrix serves every split, each statistic being three quadratic forms aᵀDb of split indicators.
    """
    n = len(pool) // 2
    dist = torch.cdist(pool, pool)  # [2n, 2n], zero diagonal
    g = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(2 * n, generator=g) for _ in range(draws)], 1)  # [2n, P]
    in_a = (order < n).to(dist.dtype)  # [2n, P] indicator of the first set
    dist_a = dist @ in_a  # [2n, P]
    s_aa = (in_a * dist_a).sum(0)
    s_ab = ((1 - in_a) * dist_a).sum(0)
    s_bb = dist.sum() - 2 * s_ab - s_aa
    stats = 2 * s_ab / n**2 - (s_aa + s_bb) / (n * (n - 1))
    return float(stats.quantile(q))


class Reference:
    """True samples of the mixture, their self-distance sum and the calibrated energy threshold."""

    def __init__(self, mixture: GaussianMixtureDenoiser):
        self.mixture = mixture
        self.samples = mixture.sample(N_ENERGY, torch.Generator().manual_seed(1000)).double()
        self.self_sum = torch.cdist(self.samples, self.samples).sum()
        pool = mixture.sample(2 * N_ENERGY, torch.Generator().manual_seed(2000)).double()
        self.threshold = energy_null_quantile(pool)


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference(make_mixture2d())


def responsibilities(mixture: GaussianMixtureDenoiser, x: Tensor) -> Tensor:
    """The oracle's posterior over components, [N, K]; its column means are unbiased for the weights."""
    comps = torch.distributions.MultivariateNormal(mixture.means, mixture.covs)
    return torch.softmax(comps.log_prob(x[:, None, :]) + mixture.weights.log(), dim=1)


def moment_failures(mixture: GaussianMixtureDenoiser, x: Tensor) -> list[str]:
    """Weights, means and covariances more than Z_MAX standard errors from the truth, as messages."""
    n, (w, mu, cov) = len(x), (mixture.weights, mixture.means, mixture.covs)
    r = responsibilities(mixture, x)  # [N, K]
    w_hat = r.mean(0)
    mu_hat = (r.T @ x) / r.sum(0)[:, None]  # [K, d]
    centred = x[None] - mu_hat[:, None]  # [K, N, d]
    cov_hat = torch.einsum("nk,kni,knj->kij", r, centred, centred) / r.sum(0)[:, None, None]
    n_k = (w * n)[:, None]  # expected samples per component
    var = cov.diagonal(dim1=1, dim2=2)  # [K, d]
    se = {
        "weight": (w * (1 - w) / n).sqrt(),  # binomial
        "mean": (var / n_k).sqrt(),
        "cov": ((var[:, :, None] * var[:, None, :] + cov**2) / n_k[..., None]).sqrt(),  # Gaussian 4th moments
    }
    failures = []
    for name, est, true in (("weight", w_hat, w), ("mean", mu_hat, mu), ("cov", cov_hat, cov)):
        z = ((est - true) / se[name]).abs()
        if z.max() > Z_MAX:
            failures.append(
                f"{name}: max |z| = {z.max():.1f} (estimate {est.tolist()}, true {true.tolist()})"
            )
    return failures


def distribution_failures(x: Tensor, ref: Reference) -> list[str]:
    """Moment failures plus an energy distance above the null's 99th percentile."""
    failures = moment_failures(ref.mixture, x)
    stat = energy_distance(x[:N_ENERGY], ref.samples, ref.self_sum)
    if stat > ref.threshold:
        failures.append(f"energy distance {stat:.5f} > null 99th percentile {ref.threshold:.5f}")
    return failures


def draw(name: str, mixture: GaussianMixtureDenoiser, steps: int, seed: int = 0) -> Tensor:
    """N samples from sampler ``name`` with its default options, float64."""
    sigmas = karras(steps, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)
    noise = torch.randn(N, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    denoiser = ODEMap(mixture) if name == "consistency" else mixture  # it needs f, not D
    return SAMPLERS[name](
        denoiser, noise * sigmas[0], sigmas, generator=torch.Generator().manual_seed(seed + 1)
    )


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_recovers_mixture(name: str, reference: Reference) -> None:
    x = draw(name, reference.mixture, STEPS.get(name, DEFAULT_STEPS))
    assert x.shape == (N, 2) and torch.isfinite(x).all()
    assert distribution_failures(x, reference) == []


def test_energy_threshold_is_calibrated(reference: Reference) -> None:
    """The threshold is positive and a fresh true sample passes every check (no false alarm here)."""
    assert reference.threshold > 0
    fresh = reference.mixture.sample(N, torch.Generator().manual_seed(3000)).double()
    assert distribution_failures(fresh, reference) == []


def test_detects_too_few_steps(reference: Reference) -> None:
    """Negative control: 10 Euler steps leave a visible bias; both the moments and the energy see it."""
    failures = distribution_failures(draw("euler", reference.mixture, 10), reference)
    assert any(f.startswith("mean") for f in failures)
    assert any(f.startswith("energy") for f in failures)


def test_energy_detects_shifted_mixture(reference: Reference) -> None:
    """Negative control: true samples shifted by 0.2 (1.2 × the smallest component std) fail the energy test.

    The energy statistic is the omnibus check and the least sensitive one (a 0.1 shift sits at its
    threshold); the mean test alone already flags a 0.03 shift at N = 4000.
    """
    shifted = reference.mixture.sample(N, torch.Generator().manual_seed(4000)).double() + torch.tensor(
        [0.2, 0]
    )
    stat = energy_distance(shifted[:N_ENERGY], reference.samples, reference.self_sum)
    assert stat > reference.threshold
    assert any(f.startswith("mean") for f in moment_failures(reference.mixture, shifted))
