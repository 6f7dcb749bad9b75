"""Step-for-step equivalence of the ODE samplers with diffusers' schedulers on a discrete VP ε-model.

The same ToyEpsNet runs on both sides: diffusers calls it on its own scaled input and timestep;
noisecraft wraps it in DiscreteVPDenoiser, which maps σ back to a fractional timestep by
inverting the linear-in-σ interpolation of the σ table. All five schedulers below derive σ from
their timesteps by that same interpolation (``np.interp``, with the default linspace spacing and
no Karras/exponential σ, which would interpolate log σ instead), so the timesteps coincide.

Diffusers stores σ in float32. We check its σ against ours to float32 precision, then hand both
sides the float64 σ of diffusers' own timesteps, so what remains is the algorithms' arithmetic.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)

from noisecraft.denoisers import DiscreteVPDenoiser
from noisecraft.samplers.base import Step
from noisecraft.samplers.ode import dpmpp_2m, euler, heun, lms
from noisecraft.samplers.unipc import unipc
from noisecraft.schedules import (
    sigma_at_timestep,
    timestep_at_sigma,
    ve_to_vp,
    vp_alphas_cumprod,
    vp_sigmas,
    vp_to_ve,
)

# Stable Diffusion's table: scaled_linear betas from 0.00085 to 0.012 over 1000 steps.
BETAS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}
ALPHAS_CUMPROD = vp_alphas_cumprod("scaled_linear", 1000, 0.00085, 0.012)  # [T] float64
TABLE = vp_sigmas(ALPHAS_CUMPROD)  # [T] increasing σ
FLOAT32_EPS = 2.0**-24

# name → (scheduler class, its options, our sampler, our options, diffusers works in VP space)
CASES = {
    "euler": (EulerDiscreteScheduler, {}, euler, {}, False),
    "heun": (HeunDiscreteScheduler, {}, heun, {}, False),
    "lms": (LMSDiscreteScheduler, {}, lms, {}, False),
    "dpmpp_2m": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
        dpmpp_2m,
        {},
        True,
    ),
    "unipc": (UniPCMultistepScheduler, {}, unipc, {}, True),
    "unipc_order3": (UniPCMultistepScheduler, {"solver_order": 3}, unipc, {"order": 3}, True),
}

# Euler and DPM-Solver++ round the sample to float32 inside every diffusers step ("upcast to avoid
# precision issues"); the others keep float64 throughout.
FLOAT32_SAMPLE = {"euler", "dpmpp_2m"}


def make_scheduler(name: str, steps: int):
    cls, options, *_ = CASES[name]
    scheduler = cls(**BETAS, **options)
    scheduler.set_timesteps(steps)
    return scheduler


def step_timesteps(name: str, scheduler) -> torch.Tensor:
    """Diffusers' timestep of each of our steps: Heun lists every later timestep twice (2 calls)."""
    t = scheduler.timesteps.double()
    return t[::2] if name == "heun" else t


def install_float64_sigmas(scheduler) -> torch.Tensor:
    """Replace diffusers' float32 σ by the float64 σ of its own timesteps (after checking them)."""
    exact = torch.cat([sigma_at_timestep(scheduler.timesteps.double(), TABLE), torch.zeros(1).double()])
    # Compare in ᾱ = 1/(1 + σ²): diffusers forms σ from a float32 ᾱ (1 − ᾱ cancels badly near
    # t = 0, so σ itself carries up to ~1e-4 relative error there); its ᾱ is good to the float32
    # cumprod's worst-case drift, 1000 roundings of 2^-24.
    theirs = 1 / (1 + scheduler.sigmas.double() ** 2)
    torch.testing.assert_close(theirs, 1 / (1 + exact**2), rtol=0, atol=1000 * FLOAT32_EPS)
    scheduler.sigmas = exact
    return exact


def run_diffusers(scheduler, net: torch.nn.Module, noise: torch.Tensor) -> list[tuple[torch.Tensor, object]]:
    """The usual pipeline loop; returns (prev_sample, pred_original_sample or None) per call."""
    x = noise * scheduler.init_noise_sigma
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices about unused arguments
        for t in scheduler.timesteps:
            eps = net(scheduler.scale_model_input(x, t), t)
            result = scheduler.step(eps, t, x)
            x = result.prev_sample
            out.append((x, getattr(result, "pred_original_sample", None)))
    return out


def test_alphas_cumprod_match_diffusers():
    """Our float64 ᾱ table is diffusers' float32 one to within its float32 cumprod rounding."""
    scheduler = EulerDiscreteScheduler(**BETAS)
    torch.testing.assert_close(
        scheduler.alphas_cumprod.double(), ALPHAS_CUMPROD, rtol=1000 * FLOAT32_EPS, atol=0
    )


@pytest.mark.parametrize("name", ["euler", "heun", "lms", "dpmpp_2m", "unipc"])
def test_timesteps_coincide(name: str):
    """σ ↔ t: diffusers' σ of its timesteps are ours, and our inversion returns its timesteps."""
    scheduler = make_scheduler(name, 12)
    t = scheduler.timesteps.double()
    if name in ("euler", "heun", "lms"):  # 999·k/11: the fractional timesteps are exercised
        assert (t != t.round()).any()
    sigma32 = scheduler.sigmas[:-1].double()
    # From diffusers' own float32 σ, to within that σ's rounding (|Δt| = |Δσ| / (dσ/dt) ≪ 1e-3).
    torch.testing.assert_close(timestep_at_sigma(sigma32, TABLE), t, rtol=0, atol=1e-3)
    # In float64 the round trip σ(t) → t is exact to rounding.
    torch.testing.assert_close(timestep_at_sigma(install_float64_sigmas(scheduler)[:-1], TABLE), t)


@pytest.mark.parametrize("steps", [6, 20])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_diffusers_step_for_step(name: str, steps: int, toy_eps_net):
    """After every step our sample (and x̂0 where diffusers returns it) is diffusers'."""
    net = toy_eps_net.double()
    _, _, sampler, options, vp = CASES[name]
    scheduler = make_scheduler(name, steps)
    install_float64_sigmas(scheduler)
    sigmas = torch.cat([sigma_at_timestep(step_timesteps(name, scheduler), TABLE), torch.zeros(1).double()])
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    theirs = run_diffusers(scheduler, net, noise)
    if name == "heun":  # a step is 2 calls (the last, an Euler step to 0, is 1): x of the 2nd, x̂0 of the 1st
        theirs = [(x, x0) for (x, _), (_, x0) in zip(theirs[1::2], theirs[0::2])] + theirs[-1:]
    x = vp_to_ve(noise, sigmas[0]) if vp else noise * sigmas[0]  # diffusers' VP start is unit noise
    ours: list[Step] = []
    sampler(DiscreteVPDenoiser(net, ALPHAS_CUMPROD), x, sigmas, callback=ours.append, **options)

    assert len(ours) == len(theirs) == steps
    # Float64 on both sides leaves rounding only. Where diffusers rounds the sample to float32 each
    # step, each step adds ≤ 2^-24 relative error, carried along by a flow that does not expand it.
    rtol = steps * 2 * FLOAT32_EPS if name in FLOAT32_SAMPLE else 1e-12
    for i, (step, (their_x, their_x0)) in enumerate(zip(ours, theirs)):
        our_x = ve_to_vp(step.x, step.sigma_next) if vp else step.x
        scale = their_x.abs().max().item()
        assert (our_x - their_x).abs().max().item() <= rtol * scale, f"{name}: step {i} differs"
        if their_x0 is not None:
            x0_scale = their_x0.abs().max().item()
            assert (step.denoised - their_x0).abs().max().item() <= rtol * x0_scale, f"{name}: x̂0 {i}"
