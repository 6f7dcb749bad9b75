"""noisecraft.schedules: closed forms, diffusers peers, round trips, training σ draws and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_rescale_zero_snr

from noisecraft.schedules import (
    MIN_ALPHA_CUMPROD,
    add_noise,
    beta_sigmas,
    check_sigmas,
    edm_lognormal,
    exponential,
    flow_matching,
    flow_time_to_sigma,
    flow_to_ve,
    karras,
    logit_normal,
    polyexponential,
    rescale_zero_terminal_snr,
    sgm_uniform,
    shift_flow_time,
    sigma_at_timestep,
    sigma_like,
    sigma_to_alpha_cumprod,
    sigma_to_flow_time,
    timestep_at_sigma,
    ve_to_flow,
    ve_to_vp,
    vp_alphas_cumprod,
    vp_discrete,
    vp_sigmas,
    vp_timesteps,
    vp_to_ve,
    vp_uniform_timestep,
)

# diffusers' Euler scheduler calls np.array(tensor, copy=False) under numpy 2: noise, not our concern
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

F64 = torch.float64
# Our beta schedule names → diffusers' names and the SD defaults for scaled_linear.
DIFFUSERS_BETAS = {
    "linear": dict(beta_schedule="linear"),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
}


def assert_schedule(sigmas: torch.Tensor, n: int) -> None:
    """The contract of every inference schedule: 1-D, n + 1 finite values, strictly decreasing, ends in 0."""
    assert sigmas.ndim == 1 and sigmas.shape[0] == n + 1
    assert torch.isfinite(sigmas).all()
    assert sigmas[-1] == 0
    assert (sigmas[1:] < sigmas[:-1]).all()
    check_sigmas(sigmas)


def unshift_flow_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Inverse of t' = s·t / (1 + (s − 1)·t), solved by hand: t = t' / (s − (s − 1)·t')."""
    return t / (shift - (shift - 1) * t)


# ----------------------------------------------------------------------------------------------
# Inference schedules: shape, order and closed forms.


@pytest.mark.parametrize("n", [1, 2, 10, 50])
def test_karras_endpoints_and_linear_in_rho_root(n: int) -> None:
    sigmas = karras(n, 0.002, 80.0, rho=7.0, dtype=F64)
    assert_schedule(sigmas, n)
    assert sigmas[0].item() == pytest.approx(80.0, rel=1e-12)
    if n > 1:
        assert sigmas[n - 1].item() == pytest.approx(0.002, rel=1e-12)
        # eq. 5: σ^(1/ρ) is an arithmetic sequence from σ_max^(1/ρ) to σ_min^(1/ρ)
        steps = sigmas[:-1].pow(1 / 7).diff()
        expected = (0.002 ** (1 / 7) - 80.0 ** (1 / 7)) / (n - 1)
        torch.testing.assert_close(steps, torch.full_like(steps, expected), rtol=1e-10, atol=0)


def test_karras_default_dtype_is_float32() -> None:
    assert karras(5, 0.1, 10.0).dtype == torch.float32


@pytest.mark.parametrize("n", [1, 3, 25])
def test_exponential_constant_log_spacing(n: int) -> None:
    sigmas = exponential(n, 0.03, 14.6, dtype=F64)
    assert_schedule(sigmas, n)
    assert sigmas[0].item() == pytest.approx(14.6, rel=1e-12)
    if n > 1:
        assert sigmas[n - 1].item() == pytest.approx(0.03, rel=1e-12)
        log_steps = sigmas[:-1].log().diff()
        expected = math.log(0.03 / 14.6) / (n - 1)
        torch.testing.assert_close(log_steps, torch.full_like(log_steps, expected), rtol=1e-10, atol=0)


@pytest.mark.parametrize("n", [1, 4, 30])
def test_polyexponential_rho_one_is_exponential(n: int) -> None:
    poly = polyexponential(n, 0.03, 14.6, rho=1.0, dtype=F64)
    assert_schedule(poly, n)
    torch.testing.assert_close(poly, exponential(n, 0.03, 14.6, dtype=F64), rtol=1e-12, atol=0)


def test_polyexponential_rho_two_closed_form() -> None:
    n, lo, hi = 8, 0.03, 14.6
    sigmas = polyexponential(n, lo, hi, rho=2.0, dtype=F64)
    assert_schedule(sigmas, n)
    # log σ_i = log σ_min + ((n − 1 − i)/(n − 1))² · log(σ_max/σ_min)
    i = torch.arange(n, dtype=F64)
    expected = (math.log(lo) + ((n - 1 - i) / (n - 1)) ** 2 * math.log(hi / lo)).exp()
    torch.testing.assert_close(sigmas[:-1], expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("n", [1, 2, 7, 30])
def test_beta_with_alpha_beta_one_is_linear_in_sigma(n: int) -> None:
    """Beta(1, 1) is the uniform distribution: its quantile function is the identity."""
    sigmas = beta_sigmas(n, 0.03, 14.6, alpha=1.0, beta=1.0, dtype=F64)
    assert_schedule(sigmas, n)
    ramp = 1 - torch.linspace(0, 1, n, dtype=F64)
    torch.testing.assert_close(sigmas[:-1], 0.03 + ramp * (14.6 - 0.03), rtol=1e-12, atol=0)


def test_beta_default_is_a1111s_and_symmetric() -> None:
    """A1111's "Beta" (α = β = 0.6): σ_min + (σ_max − σ_min)·ppf(1 − i/(n − 1)); α = β makes the steps
    mirror each other about the middle of [σ_min, σ_max]."""
    from scipy import stats

    n, lo, hi = 12, 0.03, 14.6
    sigmas = beta_sigmas(n, lo, hi, dtype=F64)
    assert_schedule(sigmas, n)
    ppf = [stats.beta.ppf(x, 0.6, 0.6) for x in 1 - np.linspace(0, 1, n)]  # A1111's own computation
    torch.testing.assert_close(sigmas[:-1], torch.tensor([lo + p * (hi - lo) for p in ppf], dtype=F64))
    assert sigmas[0].item() == pytest.approx(hi, rel=1e-12) and sigmas[n - 1].item() == pytest.approx(lo)
    torch.testing.assert_close(sigmas[:-1] + sigmas[:-1].flip(0), torch.full((n,), lo + hi, dtype=F64))
    gaps = -sigmas[:-1].diff()
    assert gaps[0] < gaps[n // 2] and gaps[-1] < gaps[n // 2]  # dense at both ends


@pytest.mark.parametrize("n", [9, 27])
def test_sgm_uniform_drops_the_last_of_n_plus_one_timesteps(n: int) -> None:
    """A1111/ComfyUI: timesteps linspace(T − 1, 0, n + 1)[:-1]. 999 = 9·111 = 27·37, so every timestep is
    an integer and σ must be the table's own entry there, whatever the interpolation between entries."""
    table = vp_sigmas(vp_alphas_cumprod("scaled_linear", 1000))
    sigmas = sgm_uniform(n, table[0].item(), table[-1].item(), table, dtype=F64)
    assert_schedule(sigmas, n)
    expected_t = [999 - i * 999 // n for i in range(n)]
    torch.testing.assert_close(sigmas[:-1], table[expected_t], rtol=1e-12, atol=0)
    assert sigmas[n - 1] > table[0]  # the last timestep (0) is the one dropped


def test_sgm_uniform_fractional_timesteps_and_continuous_models() -> None:
    """n = 20: timesteps 999·(1 − i/20), fractional, recovered exactly by the σ → t map the denoiser uses;
    without a table, n + 1 values evenly spaced in ln σ (EDM's noise input), the last dropped."""
    table = vp_sigmas(vp_alphas_cumprod("scaled_linear", 1000))
    sigmas = sgm_uniform(20, table[0].item(), table[-1].item(), table, dtype=F64)
    expected_t = torch.linspace(999, 0, 21, dtype=F64)[:-1]
    torch.testing.assert_close(timestep_at_sigma(sigmas[:-1], table), expected_t, rtol=0, atol=1e-9)
    lo, hi, n = 0.002, 80.0, 10
    continuous = sgm_uniform(n, lo, hi, dtype=F64)
    assert_schedule(continuous, n)
    i = torch.arange(n, dtype=F64)
    torch.testing.assert_close(continuous[:-1], hi * (lo / hi) ** (i / n), rtol=1e-12, atol=0)


# First and last timestep of a 10-step sampler over T = 1000 (Lin et al. 2023, table 2).
FIRST_LAST_T = {"linspace": (999, 0), "leading": (900, 0), "trailing": (999, 99)}


@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "cosine"])
def test_vp_discrete_is_a_schedule_with_table_endpoints(
    beta_schedule: str, spacing: str, zero_snr: bool
) -> None:
    alphas_cumprod = vp_alphas_cumprod(beta_schedule, zero_terminal_snr=zero_snr)
    sigmas = vp_discrete(10, alphas_cumprod, spacing, dtype=F64)
    assert_schedule(sigmas, 10)
    first_t, last_t = FIRST_LAST_T[spacing]
    a_first, a_last = alphas_cumprod[first_t].item(), alphas_cumprod[last_t].item()
    if a_first == 0:  # zero terminal SNR: σ_max is the finite stand-in, above every other table σ
        assert sigmas[0].item() == vp_sigmas(alphas_cumprod)[-1].item() > vp_sigmas(alphas_cumprod)[-2].item()
    else:
        assert sigmas[0].item() == pytest.approx(math.sqrt((1 - a_first) / a_first), rel=1e-12)
    assert sigmas[-2].item() == pytest.approx(math.sqrt((1 - a_last) / a_last), rel=1e-12)


@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "cosine"])
def test_vp_sigmas_strictly_increasing_and_finite(beta_schedule: str, zero_snr: bool) -> None:
    alphas_cumprod = vp_alphas_cumprod(beta_schedule, zero_terminal_snr=zero_snr)
    table = vp_sigmas(alphas_cumprod)
    assert table.shape == (1000,) and torch.isfinite(table).all() and (table.diff() > 0).all()
    positive = alphas_cumprod[:-1] if zero_snr else alphas_cumprod
    # every ᾱ > 0 keeps its exact σ (cosine's last ᾱ ≈ 2.4e-9 too: σ ≈ 20291, as diffusers has it)
    expected = ((1 - positive) / positive).sqrt()
    torch.testing.assert_close(table[: len(positive)], expected, rtol=1e-14, atol=0)
    if zero_snr:
        # ᾱ = 0 → 2^-24 (σ = sqrt(2^24 − 1) ≈ 4096, as diffusers), unless the linear table already
        # holds smaller ᾱ (≈ 4.2e-9 at t = 998): then half of that, to stay increasing
        floor = min(MIN_ALPHA_CUMPROD, alphas_cumprod[-2].item() / 2)
        assert table[-1].item() == pytest.approx(math.sqrt((1 - floor) / floor), rel=1e-12)
        if beta_schedule != "linear":
            assert table[-1].item() == pytest.approx(math.sqrt(2**24 - 1), rel=1e-12)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("n", [1, 4, 20])
def test_flow_matching_even_in_unshifted_time(n: int, shift: float) -> None:
    sigmas = flow_matching(n, shift=shift, dtype=F64)
    assert_schedule(sigmas, n)
    t = unshift_flow_time(sigma_to_flow_time(sigmas[:-1]), shift)
    # t_max = 0.999 and t_min = t_max / n by default: t_i = 0.999·(n − i)/n, equal steps down to 0
    expected = 0.999 * torch.arange(n, 0, -1, dtype=F64) / n
    torch.testing.assert_close(t, expected, rtol=1e-12, atol=0)
    first = shift * 0.999 / (1 + (shift - 1) * 0.999)
    assert sigmas[0].item() == pytest.approx(first / (1 - first), rel=1e-12)


def test_shift_flow_time_fixes_ends_and_pushes_toward_noise() -> None:
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=F64)
    shifted = shift_flow_time(t, 3.0)
    torch.testing.assert_close(shifted, torch.tensor([0.0, 0.5, 0.75, 1.0], dtype=F64))


# ----------------------------------------------------------------------------------------------
# Peers: diffusers schedulers.


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "cosine"])
def test_vp_alphas_cumprod_matches_diffusers(beta_schedule: str) -> None:
    theirs = DDPMScheduler(**DIFFUSERS_BETAS[beta_schedule]).alphas_cumprod.double()
    ours = vp_alphas_cumprod(beta_schedule)
    assert ours.dtype == F64 and ours.shape == (1000,)
    # diffusers builds betas and their 1000-factor cumprod in float32: absolute error ≲ 1000·2^-24·ᾱ
    # in the worst case, ≈ 3e-7 measured; 1e-6 bounds it with room.
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_vp_alphas_cumprod_explicit_zero_beta_start_is_kept() -> None:
    # beta_start = 0 is a valid choice (ᾱ_0 = 1, σ_min = 0), not "use the default"
    assert vp_alphas_cumprod("linear", beta_start=0.0)[0].item() == 1.0


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "cosine"])
def test_rescale_zero_terminal_snr_matches_diffusers(beta_schedule: str) -> None:
    betas = DDPMScheduler(**DIFFUSERS_BETAS[beta_schedule]).betas.double()  # same β for both, float64
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    ours = rescale_zero_terminal_snr(alphas_cumprod)
    theirs = torch.cumprod(1 - diffusers_rescale_zero_snr(betas), 0)  # diffusers rescales β, not ᾱ
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    assert ours[-1].item() == 0.0
    assert ours[0].item() == pytest.approx(alphas_cumprod[0].item(), rel=1e-14)
    assert vp_alphas_cumprod(beta_schedule, zero_terminal_snr=True)[-1].item() == 0.0


# diffusers builds trailing timesteps with a float np.arange(T, 0, −T/n): at exact ties (T·k/n = m + ½)
# float noise decides the rounding (n = 48: 936 where round-half-even gives 937; n = 96: 812 vs 811),
# and for n = 61 the arange overshoots to 62 values ending at timestep −1. We round exactly instead.
DIFFUSERS_TRAILING_FLOAT_ARTIFACTS = {48, 61, 96}


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_vp_timesteps_match_diffusers_euler(spacing: str) -> None:
    scheduler = EulerDiscreteScheduler(timestep_spacing=spacing)
    checked = 0
    for n in [*range(1, 26), 30, 48, 50, 61, 64, 96, 100]:
        ours = vp_timesteps(n, 1000, spacing)
        assert ours.shape == (n,)
        if (spacing == "trailing" and n in DIFFUSERS_TRAILING_FLOAT_ARTIFACTS) or (
            spacing == "linspace" and n == 1  # np.linspace(0, 999, 1) = [0]: a one-step sampler at σ_min
        ):
            continue
        scheduler.set_timesteps(n)
        # diffusers' linspace is float32: 999·i/(n − 1) is off by ≤ 999·2^-24 ≈ 6e-5; the others are exact
        atol = 1e-4 if spacing == "linspace" else 0.0
        torch.testing.assert_close(ours, scheduler.timesteps.double(), rtol=0, atol=atol)
        checked += 1
    assert checked >= 29


def test_vp_timesteps_trailing_always_n_values_with_exact_ties() -> None:
    for n in range(1, 1001):
        t = vp_timesteps(n, 1000, "trailing")
        assert t.shape == (n,) and t[0] == 999 and t[-1] >= 0 and (t.diff() < 0).all()
    # n = 48, k = 45: 1000·45/48 = 937.5 → 938 (half to even) → timestep 937
    assert vp_timesteps(48, 1000, "trailing")[3].item() == 937.0


@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "cosine"])
def test_vp_discrete_matches_diffusers_euler_sigmas(beta_schedule: str, spacing: str, zero_snr: bool) -> None:
    scheduler = EulerDiscreteScheduler(
        **DIFFUSERS_BETAS[beta_schedule], timestep_spacing=spacing, rescale_betas_zero_snr=zero_snr
    )
    # Feed diffusers' own float32 ᾱ table so that only spacing and σ interpolation are compared
    # (the tables themselves are compared above); diffusers' σ = sqrt((1 − ᾱ)/ᾱ) in float32 then
    # costs ≈ 2^-24 relative error, so rtol 1e-6.
    alphas_cumprod = scheduler.alphas_cumprod.double()
    if zero_snr:
        alphas_cumprod[-1] = 0.0  # diffusers stores its 2^-24 stand-in here; give ours the true ᾱ = 0
    # Linear + zero SNR: ᾱ_996…998 < 2^-24, so diffusers' σ table is not monotone (σ_998 ≈ 15406 >
    # σ_999 = 4096); ours puts σ_max above σ_998 instead, so the σ at t = 999 differs by design.
    skip_first = beta_schedule == "linear" and zero_snr and spacing != "leading"
    for n in (2, 10, 25):
        scheduler.set_timesteps(n)
        ours = vp_discrete(n, alphas_cumprod, spacing, dtype=F64)
        theirs = scheduler.sigmas.double()
        if skip_first:
            ours, theirs = ours[1:], theirs[1:]
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)


@pytest.mark.parametrize("n", [5, 28])
def test_flow_matching_matches_diffusers_where_finite(n: int) -> None:
    """diffusers' FlowMatchEuler: their "sigma" is our flow time t, starting at t = 1 (σ = ∞).

    Its unshifted ramp runs linearly over n points from 1 to a = shift(1/T) (diffusers shifts its
    own σ_min a second time), then shifts. Its finite part — points 1 … n−1 — is our flow_matching
    with n − 1 steps, t_max = the ramp's second point 1 − (1 − a)/(n − 1), and t_min = a.
    """
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(n)
    theirs_t = scheduler.sigmas.double()  # [n + 1], flow time, 1.0 first, 0 last
    assert theirs_t[0] == 1.0
    a = scheduler.sigma_min
    ours = flow_matching(n - 1, shift=3.0, t_max=1 - (1 - a) / (n - 1), t_min=a, dtype=F64)
    # diffusers works in float32: t is off by ≈ 2^-24, so σ = t/(1 − t) by ≈ 2^-24/(1 − t) relative
    # (1 − t ≥ 0.03 here) — rtol 1e-5 bounds it.
    torch.testing.assert_close(ours, flow_time_to_sigma(theirs_t[1:]), rtol=1e-5, atol=0)
    torch.testing.assert_close(sigma_to_flow_time(ours), theirs_t[1:], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# The forward process and conversions: round trips and the physics they encode.


def test_add_noise_scalar_and_batch_sigma() -> None:
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    torch.testing.assert_close(add_noise(x0, eps, 0.7), x0 + 0.7 * eps)
    torch.testing.assert_close(add_noise(x0, eps, torch.tensor(0.7)), x0 + 0.7 * eps)
    sigma = torch.tensor([0.1, 2.0, 30.0])
    expected = torch.stack([x0[i] + sigma[i] * eps[i] for i in range(3)])
    torch.testing.assert_close(add_noise(x0, eps, sigma), expected)


SIGMAS_WIDE = torch.tensor([1e-3, 0.1, 1.0, 7.5, 80.0, 4096.0], dtype=F64)


def test_ve_vp_and_ve_flow_round_trips() -> None:
    x = torch.randn(6, 3, 2, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(ve_to_vp(vp_to_ve(x, SIGMAS_WIDE), SIGMAS_WIDE), x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vp_to_ve(ve_to_vp(x, SIGMAS_WIDE), SIGMAS_WIDE), x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ve_to_flow(flow_to_ve(x, SIGMAS_WIDE), SIGMAS_WIDE), x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flow_to_ve(ve_to_flow(x, 2.5), 2.5), x, rtol=1e-12, atol=1e-12)


def test_flow_time_sigma_round_trips() -> None:
    torch.testing.assert_close(
        flow_time_to_sigma(sigma_to_flow_time(SIGMAS_WIDE)), SIGMAS_WIDE, rtol=1e-9, atol=0
    )
    t = torch.linspace(0.0, 0.999, 11, dtype=F64)
    torch.testing.assert_close(sigma_to_flow_time(flow_time_to_sigma(t)), t, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "cosine"])
def test_sigma_to_alpha_cumprod_inverts_vp_sigmas(beta_schedule: str) -> None:
    alphas_cumprod = vp_alphas_cumprod(beta_schedule)
    torch.testing.assert_close(
        sigma_to_alpha_cumprod(vp_sigmas(alphas_cumprod)), alphas_cumprod, rtol=1e-10, atol=0
    )
    # zero terminal SNR: every ᾱ > 0 round-trips; ᾱ = 0 comes back as the tiny positive stand-in
    zero = vp_alphas_cumprod(beta_schedule, zero_terminal_snr=True)
    back = sigma_to_alpha_cumprod(vp_sigmas(zero))
    torch.testing.assert_close(back[:-1], zero[:-1], rtol=1e-10, atol=0)
    assert 0 < back[-1].item() <= MIN_ALPHA_CUMPROD


def test_sigma_at_timestep_is_numpy_interp_and_timestep_at_sigma_inverts_it() -> None:
    table = vp_sigmas(vp_alphas_cumprod("scaled_linear"))  # [1000], increasing
    t = torch.rand(200, generator=torch.Generator().manual_seed(2), dtype=F64) * 999
    t = torch.cat([t, torch.tensor([0.0, 1.0, 500.0, 998.5, 999.0], dtype=F64)])
    sigma = sigma_at_timestep(t, table)
    expected = np.interp(t.numpy(), np.arange(1000), table.numpy())  # peer: linear interpolation
    torch.testing.assert_close(sigma, torch.from_numpy(expected), rtol=1e-12, atol=0)
    torch.testing.assert_close(timestep_at_sigma(sigma, table), t, rtol=0, atol=1e-9)
    integers = torch.arange(1000, dtype=F64)
    assert torch.equal(timestep_at_sigma(table, table), integers)  # table entries → exact integers


def test_timestep_at_sigma_clamps_outside_the_table() -> None:
    table = vp_sigmas(vp_alphas_cumprod())
    out = timestep_at_sigma(torch.tensor([1e-6, 1e6], dtype=F64), table)
    assert out.tolist() == [0.0, 999.0]


def test_ve_to_vp_gives_the_ddpm_forward_process() -> None:
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(4, 3, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64)
    t = torch.tensor([0, 100, 500, 999])
    alpha_bar = vp_alphas_cumprod("linear")[t]  # [4]
    sigma = vp_sigmas(vp_alphas_cumprod("linear"))[t]  # [4]
    x_vp = ve_to_vp(x0 + sigma[:, None] * eps, sigma)
    expected = alpha_bar.sqrt()[:, None] * x0 + (1 - alpha_bar).sqrt()[:, None] * eps
    torch.testing.assert_close(x_vp, expected, rtol=1e-12, atol=1e-12)


def test_ve_to_flow_gives_the_rectified_flow_interpolation() -> None:
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 0.999], dtype=F64)
    sigma = t / (1 - t)
    expected = (1 - t)[:, None] * x0 + t[:, None] * eps
    torch.testing.assert_close(ve_to_flow(x0 + sigma[:, None] * eps, sigma), expected, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Training σ distributions. n = 20000 draws: a mean is within 5 standard errors (std/√n) and a
# standard deviation within 5·std/√(2n) of the truth, except with probability < 1e-6.

N_DRAWS = 20_000


def assert_normal_moments(z: torch.Tensor, mean: float, std: float) -> None:
    n = z.numel()
    assert abs(z.mean().item() - mean) < 5 * std / math.sqrt(n)
    assert abs(z.std().item() - std) < 5 * std / math.sqrt(2 * n)


def test_edm_lognormal_moments_and_reproducibility() -> None:
    sigma = edm_lognormal(N_DRAWS, p_mean=-1.2, p_std=1.2, generator=torch.Generator().manual_seed(5))
    assert sigma.shape == (N_DRAWS,) and sigma.dtype == torch.float32 and (sigma > 0).all()
    assert_normal_moments(sigma.double().log(), -1.2, 1.2)
    again = edm_lognormal(N_DRAWS, p_mean=-1.2, p_std=1.2, generator=torch.Generator().manual_seed(5))
    other = edm_lognormal(N_DRAWS, p_mean=-1.2, p_std=1.2, generator=torch.Generator().manual_seed(6))
    assert torch.equal(sigma, again) and not torch.equal(sigma, other)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_logit_normal_moments_and_reproducibility(shift: float) -> None:
    draw = lambda seed: logit_normal(  # noqa: E731
        N_DRAWS, mean=0.5, std=0.8, shift=shift, generator=torch.Generator().manual_seed(seed)
    )
    sigma = draw(7)
    assert sigma.shape == (N_DRAWS,) and (sigma > 0).all()
    t = unshift_flow_time(sigma_to_flow_time(sigma.double()), shift)
    assert_normal_moments(torch.logit(t), 0.5, 0.8)
    assert torch.equal(sigma, draw(7)) and not torch.equal(sigma, draw(8))


def test_vp_uniform_timestep_hits_table_values_uniformly() -> None:
    alphas_cumprod = vp_alphas_cumprod("linear", num_train_timesteps=10)
    table = vp_sigmas(alphas_cumprod).float()  # [10]
    sigma = vp_uniform_timestep(N_DRAWS, alphas_cumprod, generator=torch.Generator().manual_seed(9))
    hits = (sigma[:, None] == table[None]).int()  # [N, 10]
    assert (hits.sum(1) == 1).all()  # every draw is exactly one table entry
    counts = hits.sum(0).double()
    # each count is Binomial(N, 1/10): mean 2000, sd ≈ 42; 5 sd either side
    expected, sd = N_DRAWS / 10, math.sqrt(N_DRAWS * 0.1 * 0.9)
    assert ((counts - expected).abs() < 5 * sd).all()
    again = vp_uniform_timestep(N_DRAWS, alphas_cumprod, generator=torch.Generator().manual_seed(9))
    assert torch.equal(sigma, again)


# ----------------------------------------------------------------------------------------------
# Bad input: one ValueError whose message names the problem.


@pytest.mark.parametrize(
    "sigmas, message",
    [
        (torch.tensor([1.0, 2.0, 0.0]), "strictly decreasing"),
        (torch.tensor([2.0, 1.0, 1.0, 0.0]), "strictly decreasing"),
        (torch.tensor([2.0, 1.0]), "end in 0"),
        (torch.tensor([2.0, float("nan"), 0.0]), "NaN"),
        (torch.tensor([float("inf"), 1.0, 0.0]), "infinity"),
        (torch.tensor([[2.0, 1.0, 0.0]]), "1-D"),
        (torch.tensor([0.0]), "at least 2"),
        (torch.tensor([1.0, -0.5, 0.0]), "non-negative"),
        ([1.0, 0.0], "torch.Tensor"),
    ],
)
def test_check_sigmas_rejects(sigmas, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_sigmas(sigmas)


@pytest.mark.parametrize("schedule", [karras, exponential, polyexponential])
def test_sigma_range_schedules_reject_bad_arguments(schedule) -> None:
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        schedule(10, 5.0, 5.0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        schedule(10, 10.0, 1.0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        schedule(10, 0.0, 1.0)
    with pytest.raises(ValueError, match="positive integer"):
        schedule(0, 0.1, 10.0)
    with pytest.raises(ValueError, match="positive integer"):
        schedule(2.5, 0.1, 10.0)


@pytest.mark.parametrize("schedule", [karras, polyexponential])
def test_rho_must_be_positive(schedule) -> None:
    with pytest.raises(ValueError, match="rho"):
        schedule(10, 0.1, 10.0, rho=0.0)


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="linear, scaled_linear, cosine"):
        vp_alphas_cumprod("squaredcos_cap_v2")
    with pytest.raises(ValueError, match="linspace, leading, trailing"):
        vp_timesteps(10, 1000, "even")
    with pytest.raises(ValueError, match="linspace, leading, trailing"):
        vp_discrete(10, vp_alphas_cumprod(), "even")
    with pytest.raises(ValueError, match=r"\[1, 1000\]"):
        vp_timesteps(1001, 1000)


def test_flow_matching_rejects_bad_arguments() -> None:
    for kwargs in (dict(t_max=1.0), dict(t_max=0.5, t_min=0.6), dict(t_min=0.0), dict(shift=0.0)):
        with pytest.raises(ValueError, match="t_min"):
            flow_matching(10, **kwargs)
    with pytest.raises(ValueError, match="t_min < t_max"):  # equal ends would repeat σ
        flow_matching(3, t_max=0.5, t_min=0.5)
    assert_schedule(flow_matching(1, t_max=0.5, t_min=0.5, dtype=F64), 1)
    with pytest.raises(ValueError, match="positive integer"):
        flow_matching(0)


def test_sigma_like_broadcasts_and_rejects_wrong_batch() -> None:
    x = torch.zeros(3, 2, 5, 5)
    assert sigma_like(0.5, x).shape == (3, 1, 1, 1)
    assert sigma_like(torch.tensor([1.0, 2.0, 3.0]), x)[:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match=r"scalar or shape \[3\]"):
        sigma_like(torch.ones(4), x)
    with pytest.raises(ValueError, match=r"scalar or shape \[3\]"):
        sigma_like(torch.ones(3, 1), x)
