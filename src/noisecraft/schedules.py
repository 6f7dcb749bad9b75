"""σ schedules for sampling, σ distributions for training, and the conversions between families.

One currency: the variance-exploding convention ``x_σ = x0 + σ·ε`` (Karras et al. 2022, "EDM").
A VP/DDPM model with cumulative product ᾱ sits at ``σ = sqrt((1 − ᾱ)/ᾱ)`` and sees
``x_vp = x_σ / sqrt(1 + σ²)``; a flow-matching model at time t sits at ``σ = t/(1 − t)`` and sees
``x_t = x_σ·(1 − t)``. Every inference schedule is a strictly decreasing 1-D tensor ending in 0.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .devices import cast_then_move

BetaSchedule = Literal["linear", "scaled_linear", "cosine"]
Spacing = Literal["linspace", "leading", "trailing"]

# The ᾱ a zero-terminal-SNR table's final 0 becomes, so that σ_max stays finite (≈ 4096, as diffusers);
# lower only if the table already holds a smaller positive ᾱ (see ``vp_sigmas``).
MIN_ALPHA_CUMPROD = 2.0**-24


# ----------------------------------------------------------------------------------------------
# Checks and broadcasting shared by every module that takes σ.


def check_sigmas(sigmas: Tensor) -> Tensor:
    """Raise a clear ``ValueError`` unless ``sigmas`` is a usable sampling schedule; return it."""
    if not isinstance(sigmas, Tensor):
        raise ValueError(f"sigmas must be a 1-D torch.Tensor, got {type(sigmas).__name__}")
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 values, got shape {tuple(sigmas.shape)}")
    if not torch.isfinite(sigmas).all():
        raise ValueError("sigmas contain NaN or infinity")
    if sigmas[-1] != 0:
        raise ValueError(f"sigmas must end in 0 (the clean image), last value is {sigmas[-1].item()}")
    if (sigmas < 0).any():
        raise ValueError("sigmas must be non-negative")
    if not (sigmas[1:] < sigmas[:-1]).all():
        raise ValueError("sigmas must be strictly decreasing (from σ_max down to 0)")
    return sigmas


def sigma_like(sigma: Tensor | float, x: Tensor) -> Tensor:
    """Broadcast σ (a scalar or shape [B]) against ``x`` of shape [B, ...] → [B, 1, ..., 1]."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.ndim != 1 or sigma.shape[0] != x.shape[0]:
        raise ValueError(f"sigma must be a scalar or shape [{x.shape[0]}], got {tuple(sigma.shape)}")
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


def _finish(sigmas: Tensor, dtype: torch.dtype) -> Tensor:
    """Append the terminal 0 and cast."""
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(dtype)


# ----------------------------------------------------------------------------------------------
# Inference schedules: n steps → n + 1 values, strictly decreasing, last one 0.


def karras(
    n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Karras et al. 2022, eq. 5: σ_i = (σ_max^(1/ρ) + i/(n−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ."""
    _check_range(n, sigma_min, sigma_max, rho)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _finish((hi + ramp * (lo - hi)) ** rho, dtype)


def exponential(n: int, sigma_min: float, sigma_max: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """σ evenly spaced in log σ (the ρ → ∞ limit of Karras)."""
    _check_range(n, sigma_min, sigma_max)
    log_sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64)
    return _finish(log_sigmas.exp(), dtype)


def polyexponential(
    n: int, sigma_min: float, sigma_max: float, rho: float = 1.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """log σ interpolated with a polynomial ramp of power ρ (ρ = 1 is ``exponential``)."""
    _check_range(n, sigma_min, sigma_max, rho)
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    log_sigmas = ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)
    return _finish(log_sigmas.exp(), dtype)


def beta_sigmas(
    n: int,
    sigma_min: float,
    sigma_max: float,
    alpha: float = 0.6,
    beta: float = 0.6,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Lee et al. 2024 ("Beta sampling is all you need"), as AUTOMATIC1111's "Beta": σ_i = σ_min +
    (σ_max − σ_min)·F⁻¹(1 − i/(n−1)), F the Beta(α, β) CDF: dense steps at both ends for α, β < 1."""
    from scipy.special import betaincinv  # the inverse regularised incomplete beta = Beta(α, β) ppf

    _check_range(n, sigma_min, sigma_max)
    if not (0 < alpha < math.inf and 0 < beta < math.inf):
        raise ValueError(f"alpha and beta must be positive and finite, got {alpha}, {beta}")
    ramp = 1 - torch.linspace(0, 1, n, dtype=torch.float64)  # 1 … 0
    quantiles = torch.from_numpy(betaincinv(alpha, beta, ramp.numpy()))  # [n], 1 … 0
    return _finish(sigma_min + quantiles * (sigma_max - sigma_min), dtype)


def sgm_uniform(
    n: int,
    sigma_min: float,
    sigma_max: float,
    sigma_table: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """n + 1 timesteps evenly spaced from σ_max's to σ_min's, the last dropped (Stability's SGM
    sampling, A1111's and ComfyUI's "SGM Uniform"). Time is the discrete model's timestep in
    ``sigma_table`` (increasing σ per timestep); without a table, EDM's noise input ln(σ)/4."""
    _check_range(n, sigma_min, sigma_max)
    if sigma_table is None:
        log_sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n + 1, dtype=torch.float64)
        return _finish(log_sigmas[:-1].exp(), dtype)
    table = sigma_table.to(torch.float64)
    ends = timestep_at_sigma(torch.tensor([sigma_max, sigma_min], dtype=torch.float64), table)
    timesteps = torch.linspace(float(ends[0]), float(ends[1]), n + 1, dtype=torch.float64)[:-1]
    return _finish(sigma_at_timestep(timesteps, table), dtype)


def _check_range(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"number of steps must be a positive integer, got {n}")
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
    if not 0 < rho < math.inf:
        raise ValueError(f"rho must be positive and finite, got {rho}")


# ----------------------------------------------------------------------------------------------
# Discrete VP (DDPM) tables and schedules.


def vp_alphas_cumprod(
    beta_schedule: BetaSchedule = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float | None = None,
    beta_end: float | None = None,
    zero_terminal_snr: bool = False,
) -> Tensor:
    """ᾱ_t for t = 0 … T−1 (Ho et al. 2020; cosine: Nichol & Dhariwal 2021), float64, [T]."""
    T = num_train_timesteps
    if beta_schedule == "linear":
        lo = 1e-4 if beta_start is None else beta_start
        hi = 0.02 if beta_end is None else beta_end
        betas = torch.linspace(lo, hi, T, dtype=torch.float64)
    elif beta_schedule == "scaled_linear":
        lo = 0.00085 if beta_start is None else beta_start
        hi = 0.012 if beta_end is None else beta_end
        betas = torch.linspace(lo**0.5, hi**0.5, T, dtype=torch.float64) ** 2
    elif beta_schedule == "cosine":

        def alpha_bar(t: Tensor) -> Tensor:
            return torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        steps = torch.arange(T + 1, dtype=torch.float64) / T
        betas = (1 - alpha_bar(steps[1:]) / alpha_bar(steps[:-1])).clamp(max=0.999)
    else:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r}; valid: linear, scaled_linear, cosine")
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    return rescale_zero_terminal_snr(alphas_cumprod) if zero_terminal_snr else alphas_cumprod


def rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """Lin et al. 2023, Algorithm 1: shift and scale sqrt(ᾱ) so the last step is pure noise."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    return root**2


def vp_sigmas(alphas_cumprod: Tensor) -> Tensor:
    """σ of each training timestep, increasing: sqrt((1 − ᾱ)/ᾱ), ᾱ = 0 replaced to stay finite."""
    alphas_cumprod = alphas_cumprod.to(torch.float64)
    positive = alphas_cumprod[alphas_cumprod > 0]
    # Only ᾱ = 0 is replaced, and below every positive ᾱ (a linear zero-SNR table has ᾱ < 2^-24 at
    # t = 996 … 998), so the table stays strictly increasing and σ_max maps back to t = T − 1.
    floor = min(MIN_ALPHA_CUMPROD, positive.min().item() / 2) if positive.numel() else MIN_ALPHA_CUMPROD
    alphas_cumprod = torch.where(alphas_cumprod > 0, alphas_cumprod, floor)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


def vp_timesteps(n: int, num_train_timesteps: int, spacing: Spacing = "linspace") -> Tensor:
    """Decreasing timesteps of an n-step sampler over T training steps (Lin et al. 2023, table 2)."""
    T = num_train_timesteps
    if int(n) != n or not 1 <= n <= T:
        raise ValueError(f"number of steps must be an integer in [1, {T}], got {n}")
    if spacing == "linspace":
        return torch.linspace(T - 1, 0, n, dtype=torch.float64)
    if spacing == "leading":
        return (torch.arange(n, dtype=torch.float64) * (T // n)).flip(0)
    if spacing == "trailing":
        # round(T·k/n) − 1 for k = n … 1: T·k is exact and the division correctly rounded, so a true
        # tie stays a tie (rounded half-to-even) and there are always n values, where a float
        # arange(T, 0, −T/n) can overshoot to n + 1 values ending at −1 (e.g. T = 1000, n = 61).
        return (T * torch.arange(n, 0, -1, dtype=torch.float64) / n).round() - 1
    raise ValueError(f"unknown spacing {spacing!r}; valid: linspace, leading, trailing")


def sigma_at_timestep(t: Tensor, table: Tensor) -> Tensor:
    """σ at (fractional) timesteps t, linear between the entries of the increasing σ ``table``."""
    t = t.to(torch.float64).clamp(0, len(table) - 1)
    lo = t.floor().long().clamp(max=len(table) - 2)
    w = t - lo
    return (1 - w) * table[lo] + w * table[lo + 1]


def timestep_at_sigma(sigma: Tensor, table: Tensor) -> Tensor:
    """The exact inverse of ``sigma_at_timestep``: fractional timestep of each σ, clamped to [0, T−1].

    Computed where the table is (a float64 table stays on the CPU: MPS has none), returned on σ's device.
    """
    s = sigma.to(table.device).to(table.dtype).contiguous()  # contiguous: searchsorted warns on a strided σ
    hi = torch.searchsorted(table, s).clamp(1, len(table) - 1)
    lo = hi - 1
    w = (s - table[lo]) / (table[hi] - table[lo])
    return cast_then_move((lo + w).clamp(0, len(table) - 1), sigma.device, sigma.dtype)


def vp_discrete(
    n: int,
    alphas_cumprod: Tensor,
    spacing: Spacing = "linspace",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The σ of an n-step sampler on a discrete VP model's timesteps, then 0."""
    return discrete_sigmas(n, vp_sigmas(alphas_cumprod), spacing, dtype)


def discrete_sigmas(
    n: int, sigma_table: Tensor, spacing: Spacing = "linspace", dtype: torch.dtype = torch.float32
) -> Tensor:
    """The σ of an n-step sampler at the timesteps ``spacing`` picks from a model's increasing σ table,
    then 0."""
    timesteps = vp_timesteps(n, len(sigma_table), spacing)
    return _finish(sigma_at_timestep(timesteps, sigma_table), dtype)


# ----------------------------------------------------------------------------------------------
# Flow matching / rectified flow.


def shift_flow_time(t: Tensor, shift: float) -> Tensor:
    """Esser et al. 2024 (SD3), eq. 23: t' = shift·t / (1 + (shift − 1)·t)."""
    return shift * t / (1 + (shift - 1) * t)


def flow_matching(
    n: int,
    shift: float = 1.0,
    t_max: float = 0.999,
    t_min: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """n steps of flow time evenly spaced from ``t_max`` to ``t_min`` (then shifted), as σ = t/(1−t).

    t = 1 is pure noise (σ = ∞), so the schedule starts just below it; ``t_min`` defaults to
    ``t_max / n`` so that the last step lands on the clean image like an SD3 sampler's.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"number of steps must be a positive integer, got {n}")
    t_min = t_max / n if t_min is None else t_min
    if not (0 < t_min <= t_max < 1) or (n > 1 and t_min == t_max) or shift <= 0:
        raise ValueError(f"need 0 < t_min < t_max < 1 and shift > 0, got {t_min}, {t_max}, {shift}")
    t = shift_flow_time(torch.linspace(t_max, t_min, n, dtype=torch.float64), shift)
    return _finish(flow_time_to_sigma(t), dtype)


# ----------------------------------------------------------------------------------------------
# The forward process and conversions between families.


def add_noise(x0: Tensor, noise: Tensor, sigma: Tensor | float) -> Tensor:
    """The forward process in one jump: x_σ = x0 + σ·ε, σ a scalar or shape [B]."""
    return x0 + sigma_like(sigma, x0) * noise


def sigma_to_alpha_cumprod(sigma: Tensor) -> Tensor:
    """ᾱ = 1 / (1 + σ²)."""
    return 1 / (1 + sigma**2)


def ve_to_vp(x: Tensor, sigma: Tensor | float) -> Tensor:
    """x_vp = x_σ / sqrt(1 + σ²): the input a VP network was trained on."""
    return x / (1 + sigma_like(sigma, x) ** 2).sqrt()


def vp_to_ve(x_vp: Tensor, sigma: Tensor | float) -> Tensor:
    """x_σ = x_vp · sqrt(1 + σ²)."""
    return x_vp * (1 + sigma_like(sigma, x_vp) ** 2).sqrt()


def flow_time_to_sigma(t: Tensor) -> Tensor:
    """σ = t / (1 − t)."""
    return t / (1 - t)


def sigma_to_flow_time(sigma: Tensor) -> Tensor:
    """t = σ / (1 + σ)."""
    return sigma / (1 + sigma)


def ve_to_flow(x: Tensor, sigma: Tensor | float) -> Tensor:
    """x_t = x_σ · (1 − t) = x_σ / (1 + σ)."""
    return x / (1 + sigma_like(sigma, x))


def flow_to_ve(x_t: Tensor, sigma: Tensor | float) -> Tensor:
    """x_σ = x_t · (1 + σ)."""
    return x_t * (1 + sigma_like(sigma, x_t))


# ----------------------------------------------------------------------------------------------
# Training σ distributions: draw σ for a batch of n examples.


def edm_lognormal(
    n: int, p_mean: float = -1.2, p_std: float = 1.2, generator: torch.Generator | None = None
) -> Tensor:
    """Karras et al. 2022, table 1: ln σ ~ N(P_mean, P_std²)."""
    return (torch.randn(n, generator=generator, dtype=torch.float64) * p_std + p_mean).exp().float()


def vp_uniform_timestep(n: int, alphas_cumprod: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Ho et al. 2020: t ~ U{0, …, T−1}, returned as that timestep's σ."""
    t = torch.randint(0, len(alphas_cumprod), (n,), generator=generator)
    return vp_sigmas(alphas_cumprod)[t].float()


def logit_normal(
    n: int,
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Esser et al. 2024: flow time t = sigmoid(N(mean, std²)) (then shifted), returned as σ."""
    t = torch.sigmoid(torch.randn(n, generator=generator, dtype=torch.float64) * std + mean)
    t = shift_flow_time(t, shift).clamp(eps, 1 - eps)
    return flow_time_to_sigma(t).float()
