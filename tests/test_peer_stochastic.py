"""ddim, ddpm and euler_ancestral against diffusers' schedulers, step for step, with the same noise.

An ε-network (conftest's ToyEpsNet) on a discrete linear-β VP schedule is run twice: through a
diffusers scheduler loop (VP samples x_vp) and through our sampler with DiscreteVPDenoiser (σ-scale
samples x_σ = x_vp·sqrt(1 + σ²)). Both draw their noise from a torch.Generator with the same seed,
in the same order and shape ([B, C, H, W], dtype of the model output), so the draws coincide.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ToyEpsNet
from torch import Tensor

from noisecraft.denoisers import DiscreteVPDenoiser
from noisecraft.samplers import SAMPLERS, Step
from noisecraft.schedules import sigma_at_timestep, vp_alphas_cumprod, vp_discrete, vp_sigmas, vp_to_ve

diffusers = pytest.importorskip("diffusers")
# diffusers' own numpy-2 notice when it turns a tensor into an array; nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

T = 1000
SHAPE = (2, 3, 8, 8)
ALPHAS_CUMPROD = vp_alphas_cumprod("linear", T)  # [T] float64, β from 1e-4 to 0.02 like diffusers' default


@pytest.fixture(scope="module")
def net() -> ToyEpsNet:
    return ToyEpsNet(channels=SHAPE[1]).double().requires_grad_(False)


def make_scheduler(cls, **kwargs):
    """A diffusers scheduler on the linear-β table, its ᾱ swapped for our float64 one (checked equal)."""
    scheduler = cls(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, **kwargs)
    # diffusers builds ᾱ in float32; ours is the same table to float32 rounding
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), ALPHAS_CUMPROD, rtol=2e-6, atol=0)
    scheduler.alphas_cumprod = ALPHAS_CUMPROD.clone()  # so both sides do their arithmetic in float64
    return scheduler


def ours(name: str, net: ToyEpsNet, x: Tensor, sigmas: Tensor, seed: int, **opts) -> list[Tensor]:
    """Our sampler's sample after every step (σ scale)."""
    steps: list[Step] = []
    model = DiscreteVPDenoiser(net, ALPHAS_CUMPROD)
    SAMPLERS[name](
        model, x, sigmas, generator=torch.Generator().manual_seed(seed), callback=steps.append, **opts
    )
    return [s.x for s in steps]


def initial_noise() -> Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def run_vp_scheduler(
    scheduler, net: ToyEpsNet, steps: int, seed: int, **step_kwargs
) -> tuple[Tensor, list[Tensor]]:
    """The diffusers loop for DDIM/DDPM (VP samples, integer timesteps); returns timesteps and samples."""
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x_vp, samples = initial_noise(), []
    for t in scheduler.timesteps:
        eps = net(x_vp, t.to(torch.float64).expand(SHAPE[0]))
        x_vp = scheduler.step(eps, t, x_vp, generator=generator, **step_kwargs).prev_sample
        samples.append(x_vp)
    return scheduler.timesteps, samples


def sigmas_of(timesteps: Tensor) -> Tensor:
    """σ of diffusers' timesteps, then 0: the final step to ᾱ = 1 (set_alpha_to_one / t = −1) is σ = 0."""
    table = vp_sigmas(ALPHAS_CUMPROD)
    return torch.cat(
        [sigma_at_timestep(timesteps.to(torch.float64), table), torch.zeros(1, dtype=torch.float64)]
    )


def assert_steps_match(mine: list[Tensor], theirs_ve: list[Tensor], rtol: float) -> None:
    """Every step's sample agrees to ``rtol`` of the sample's own scale."""
    assert len(mine) == len(theirs_ve)
    for i, (a, b) in enumerate(zip(mine, theirs_ve, strict=True)):
        err = float((a - b).abs().max() / b.abs().max())
        assert err < rtol, f"step {i}: relative difference {err:.2e}"


# Float64 on both sides, the same formulas in a different algebra (σ vs ᾱ, x_σ = x_vp·sqrt(1 + σ²)):
# each step is ~10 roundings of 1.1e-16 on values of the sample's scale, so 10 steps stay below
# ~1e-14 of that scale (measured: ≤ 8e-16). We allow 1e-13.
RTOL_F64 = 1e-13


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_matches_diffusers(net: ToyEpsNet, eta: float) -> None:
    scheduler = make_scheduler(diffusers.DDIMScheduler, clip_sample=False, set_alpha_to_one=True)
    timesteps, theirs = run_vp_scheduler(scheduler, net, 10, seed=7, eta=eta)
    sigmas = sigmas_of(timesteps)
    mine = ours("ddim", net, vp_to_ve(initial_noise(), sigmas[0]), sigmas, seed=7, eta=eta)
    assert_steps_match(mine, [vp_to_ve(x, s) for x, s in zip(theirs, sigmas[1:], strict=True)], RTOL_F64)


def test_ddpm_matches_diffusers(net: ToyEpsNet) -> None:
    scheduler = make_scheduler(diffusers.DDPMScheduler, clip_sample=False, variance_type="fixed_small")
    timesteps, theirs = run_vp_scheduler(scheduler, net, 10, seed=3)
    sigmas = sigmas_of(timesteps)
    mine = ours("ddpm", net, vp_to_ve(initial_noise(), sigmas[0]), sigmas, seed=3)
    assert_steps_match(mine, [vp_to_ve(x, s) for x, s in zip(theirs, sigmas[1:], strict=True)], RTOL_F64)


def test_euler_ancestral_matches_diffusers(net: ToyEpsNet) -> None:
    """EulerAncestralDiscreteScheduler works on the σ scale already, with fractional timesteps.

    It rounds the sample to float32 at the start of every step (``sample.to(torch.float32)`` in its
    ``step``; the rest of its arithmetic is float64 here): 2⁻²⁴ ≈ 6e-8 of the sample's scale per
    step, accumulating at worst linearly, 12 × 6e-8 ≈ 7e-7 (measured: 2e-7). We allow 1e-6.
    """
    scheduler = make_scheduler(diffusers.EulerAncestralDiscreteScheduler)
    scheduler.set_timesteps(12)
    # its σ in float64 (it stores float32): the same interpolation on the same ᾱ table
    table = vp_sigmas(ALPHAS_CUMPROD).numpy()
    sigmas = torch.from_numpy(
        np.append(np.interp(scheduler.timesteps.double().numpy(), np.arange(T), table), 0.0)
    )
    torch.testing.assert_close(scheduler.sigmas.double(), sigmas, rtol=1e-6, atol=0)
    torch.testing.assert_close(
        sigmas_of(scheduler.timesteps), sigmas, rtol=1e-12, atol=0
    )  # our interpolation
    torch.testing.assert_close(
        vp_discrete(12, ALPHAS_CUMPROD, "linspace", torch.float64), sigmas, rtol=1e-5, atol=0
    )
    scheduler.sigmas = sigmas

    generator = torch.Generator().manual_seed(11)
    x, theirs = initial_noise() * scheduler.init_noise_sigma, []
    x0 = x.clone()
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)  # x_σ / sqrt(1 + σ²)
        eps = net(x_in, t.to(torch.float64).expand(SHAPE[0]))
        x = scheduler.step(eps, t, x, generator=generator).prev_sample
        theirs.append(x)
    mine = ours("euler_ancestral", net, x0, sigmas, seed=11)
    assert_steps_match(mine, theirs, 1e-6)


def test_noise_actually_matters(net: ToyEpsNet) -> None:
    """The control: with a different seed the DDPM trajectories differ by far more than the tolerance."""
    scheduler = make_scheduler(diffusers.DDPMScheduler, clip_sample=False)
    timesteps, theirs = run_vp_scheduler(scheduler, net, 10, seed=3)
    sigmas = sigmas_of(timesteps)
    mine = ours("ddpm", net, vp_to_ve(initial_noise(), sigmas[0]), sigmas, seed=4)
    with pytest.raises(AssertionError, match="relative difference"):
        assert_steps_match(mine, [vp_to_ve(x, s) for x, s in zip(theirs, sigmas[1:], strict=True)], 1e-2)
