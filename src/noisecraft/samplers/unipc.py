"""UniPC: a unified predictor–corrector multistep solver of the probability-flow ODE (Zhao et al. 2023).

Written in the data-prediction form on our σ scale, with λ = −log σ (the VP log-SNR/2 is the
same λ, so nothing changes in moving from the paper's VP variables): one step from σ_s to σ_t,
h = λ_t − λ_s > 0, is

    x_t = (σ_t/σ_s)·x_s − expm1(−h)·D_s − B(h)·Σ_k ρ_k·(D_k − D_s)/r_k,   r_k = (λ_k − λ_s)/h,

with B(h) = expm1(−h) (the paper's "B2(h)", diffusers' ``bh2``). The predictor (UniP) takes the
D_k of earlier steps; the corrector (UniC) reuses the evaluation at the predicted point, so the
correction costs no extra denoiser call and raises the order by one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..conditioning import Conditioning
from ..denoisers import Denoiser
from .base import Callback, Generator, check_inputs, denoise, report


def unipc_b(h: float, order: int) -> list[float]:
    """b_k = k!·(−h)·φ_{k+1}(−h) / B(h), k = 1 … order: the right-hand side of R ρ = b (Zhao et al. 2023)."""
    hh = -h  # data prediction integrates towards decreasing λ in the paper's sign convention
    b_h = math.expm1(hh)
    g, factorial, b = math.expm1(hh) / hh - 1, 1, []
    for k in range(1, order + 1):
        b.append(g * factorial / b_h)
        factorial *= k + 1
        g = g / hh - 1 / factorial
    return b


def unipc_update(
    x: Tensor, sigma_s: float, sigma_t: float, history: list[tuple[float, Tensor]], rhos: list[float]
) -> Tensor:
    """One B(h) update from (σ_s, x) to σ_t; history = [(σ_s, D_s), (σ_1, D_1), …], rhos per D_k.

    For the corrector the last history entry is (σ_t, D_t) and r = 1 for it.
    """
    h = math.log(sigma_s / sigma_t)
    d_s = history[0][1]
    x_t = (sigma_t / sigma_s) * x - math.expm1(-h) * d_s
    for rho, (sigma_k, d_k) in zip(rhos, history[1:]):
        r_k = math.log(sigma_s / sigma_k) / h  # (λ_k − λ_s)/h
        x_t = x_t - math.expm1(-h) * rho * (d_k - d_s) / r_k
    return x_t


def predictor_rhos(h: float, ratios: list[float]) -> list[float]:
    """UniP weights for the earlier steps' r_k: ½ at order 2 (as diffusers), else solve R ρ = b."""
    if not ratios:
        return []
    if len(ratios) == 1:
        return [0.5]
    return _solve_vandermonde(ratios, unipc_b(h, len(ratios)))


def corrector_rhos(h: float, ratios: list[float]) -> list[float]:
    """UniC weights for the earlier steps' r_k and, last, the new point (r = 1): ½ at order 1."""
    if not ratios:
        return [0.5]
    return _solve_vandermonde([*ratios, 1.0], unipc_b(h, len(ratios) + 1))


def _solve_vandermonde(ratios: list[float], b: list[float]) -> list[float]:
    """ρ with Σ_k ρ_k·r_k^(j−1) = b_j for j = 1 … len(ratios), in float64."""
    r = torch.tensor(ratios, dtype=torch.float64)
    system = torch.stack([r**j for j in range(len(ratios))])  # [p, p], row j holds r_k^j
    return torch.linalg.solve(system, torch.tensor(b, dtype=torch.float64)).tolist()


def unipc(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Conditioning | None = None,
    *,
    generator: Generator = None,
    callback: Callback | None = None,
    order: int = 2,
) -> Tensor:
    """UniPC-p with B(h) = expm1(−h) in data prediction (Zhao et al. 2023), as diffusers' default.

    ``order`` = p is the predictor's order; the corrector lifts it to p + 1. p = 2 (the default, as
    in diffusers) is the robust choice for guided sampling; p = 3 suits unguided sampling. Like
    diffusers' ``lower_order_final``, step i uses order min(p, i + 1, n − i): the start has no
    history and the last steps are large. The step to σ = 0 lands on the denoised estimate. The
    callback sees each predictor result; it is corrected at the start of the next step.
    """
    sigmas = check_inputs(x, sigmas)
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    grid = sigmas.cpu().double().tolist()
    n = len(grid) - 1
    history: list[tuple[float, Tensor]] = []  # (σ_k, D_k), newest first
    x_start, step_order = x, 0  # the last predictor's starting point and order
    for i in range(n):
        denoised = denoise(denoiser, x, sigmas[i], cond)
        if history:  # UniC: redo the last step with D at its predicted end point included
            s_prev, past = history[0][0], history[:step_order]
            h = math.log(s_prev / grid[i])
            rhos = corrector_rhos(h, [math.log(s_prev / s) / h for s, _ in past[1:]])
            x = unipc_update(x_start, s_prev, grid[i], [*past, (grid[i], denoised)], rhos)
        history = [(grid[i], denoised), *history][:order]
        if grid[i + 1] == 0:
            x = denoised
        else:
            step_order = min(order, len(history), n - i)
            past = history[:step_order]
            h = math.log(grid[i] / grid[i + 1])
            ratios = [math.log(grid[i] / s) / h for s, _ in past[1:]]
            x_start = x
            x = unipc_update(x, grid[i], grid[i + 1], past, predictor_rhos(h, ratios))
        report(callback, i, sigmas, x, denoised)
    return x
