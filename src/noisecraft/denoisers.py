"""Denoisers: every model family as one function D(x_σ, σ, cond) → x̂0 (the exact mixture oracle is in
``mixture.py``, re-exported here).

A network never sees σ math: it maps ``(x_in, c_noise, cond) → raw``. The wrappers here turn raw
outputs of EDM-, ε-, v-, x0- and flow-parameterised networks into the x0 estimate on the
variance-exploding scale ``x_σ = x0 + σ·ε`` that every sampler walks.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
from torch import Tensor, nn

from .conditioning import Conditioning
from .mixture import GaussianMixtureDenoiser  # noqa: F401  (re-exported: the oracle is a Denoiser)
from .schedules import sigma_like, sigma_to_flow_time, timestep_at_sigma, vp_sigmas

Prediction = Literal["eps", "v", "x0"]


class Denoiser(Protocol):
    """D(x, σ, cond) → x̂0 with the shape of x; σ has shape [B] (a scalar is broadcast)."""

    def __call__(self, x: Tensor, sigma: Tensor, cond: Conditioning | None = None) -> Tensor: ...


class Net(Protocol):
    """A raw network: (x_in [B, ...], c_noise [B], cond) → raw output with the shape of x_in."""

    def __call__(self, x_in: Tensor, c_noise: Tensor, cond: Conditioning | None = None) -> Tensor: ...


def sigma_vector(sigma: Tensor | float, x: Tensor) -> Tensor:
    """σ as a float tensor of shape [B] matching x's batch."""
    return sigma_like(sigma, x).reshape(-1)


def score(denoiser: Denoiser, x: Tensor, sigma: Tensor | float, cond: Conditioning | None = None) -> Tensor:
    """∇ log p_σ(x) = (D(x, σ) − x) / σ² (Tweedie's formula; Vincent 2011)."""
    s = sigma_like(sigma, x)
    return (denoiser(x, sigma_vector(sigma, x), cond) - x) / s**2


class FixedBatch:
    """Runs a denoiser on chunks of exactly ``rows`` samples (the last padded with copies of its final
    sample) and returns the real rows: each sample's arithmetic is then the same whatever batch it came in.

    CPU BLAS and oneDNN choose kernels, and so rounding, by the row count (measured on an AMD EPYC: a
    batch of 1, of 2–3 and of 4–9 round three different ways, ~1e-7) but compute rows independently
    within one call; without this, a seed's image can differ by one 8-bit level between batches.
    """

    def __init__(self, denoiser: Denoiser, rows: int):
        if rows < 1:
            raise ValueError(f"rows must be at least 1, got {rows}")
        self.denoiser, self.rows = denoiser, rows

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Conditioning | None = None) -> Tensor:
        b, sigma = x.shape[0], sigma_vector(sigma, x)  # [B]
        if cond is not None and len(cond) != b:
            raise ValueError(f"cond has {len(cond)} prompts for {b} samples")
        pad = -b % self.rows
        if pad:
            index = torch.cat([torch.arange(b), torch.full((pad,), b - 1)]).to(x.device)  # [B + pad]
            x, sigma, cond = x[index], sigma[index], None if cond is None else cond[index]
        chunks = [
            self.denoiser(
                x[i : i + self.rows],
                sigma[i : i + self.rows],
                None if cond is None else cond[i : i + self.rows],
            )
            for i in range(0, x.shape[0], self.rows)
        ]
        return torch.cat(chunks)[:b]


class EDMPrecond(nn.Module):
    """Karras et al. 2022, table 1 preconditioning: D = c_skip·x + c_out·F(c_in·x, ¼ ln σ)."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.net, self.sigma_data = net, sigma_data

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Conditioning | None = None) -> Tensor:
        s, sd = sigma_like(sigma, x), self.sigma_data
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (s**2 + sd**2).sqrt()
        c_noise = s.log().reshape(-1) / 4  # [B]
        return c_skip * x + c_out * self.net(c_in * x, c_noise, cond)


CONSISTENCY_SIGMA_MIN = 0.002  # ε of Song et al. 2023: the σ where a consistency function is the identity


class ConsistencyPrecond(nn.Module):
    """Song et al. 2023, appendix C: EDM's preconditioning with c_skip and c_out shifted to σ_min, so
    c_skip(σ_min) = 1 and c_out(σ_min) = 0 and the consistency function is the identity there."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, sigma_min: float = CONSISTENCY_SIGMA_MIN):
        super().__init__()
        self.net, self.sigma_data, self.sigma_min = net, sigma_data, sigma_min

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Conditioning | None = None) -> Tensor:
        s, sd, lo = sigma_like(sigma, x), self.sigma_data, self.sigma_min
        c_skip = sd**2 / ((s - lo) ** 2 + sd**2)
        c_out = (s - lo) * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (s**2 + sd**2).sqrt()  # c_in and c_noise as EDM's: a teacher's weights fit as they are
        c_noise = s.log().reshape(-1) / 4  # [B]
        return c_skip * x + c_out * self.net(c_in * x, c_noise, cond)


def x0_from_vp_prediction(raw: Tensor, x: Tensor, sigma: Tensor, prediction: Prediction) -> Tensor:
    """x̂0 on the VE scale from a VP network's ε, v or x0 output, the network having seen x/sqrt(1+σ²)."""
    s = sigma_like(sigma, x)
    if prediction == "eps":  # x_σ = x0 + σ·ε
        return x - s * raw
    if prediction == "v":  # v = α·ε − s_vp·x0 with α = 1/sqrt(1+σ²), s_vp = σ/sqrt(1+σ²)
        return x / (1 + s**2) - s / (1 + s**2).sqrt() * raw
    if prediction == "x0":
        return raw
    raise ValueError(f"unknown prediction {prediction!r}; valid: eps, v, x0")


class DiscreteVPDenoiser(nn.Module):
    """A DDPM-style network over integer timesteps 0 … T−1, on any σ (σ → t interpolated)."""

    def __init__(self, net: nn.Module, alphas_cumprod: Tensor, prediction: Prediction = "eps"):
        super().__init__()
        x0_from_vp_prediction(torch.zeros(1), torch.zeros(1), torch.ones(1), prediction)  # validate
        self.net, self.prediction = net, prediction
        self.register_buffer("sigma_table", vp_sigmas(alphas_cumprod), persistent=False)  # [T]

    @property
    def sigma_min(self) -> float:
        return float(self.sigma_table[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigma_table[-1])

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Conditioning | None = None) -> Tensor:
        sigma = sigma_vector(sigma, x)
        t = timestep_at_sigma(sigma, self.sigma_table)  # [B] fractional timesteps
        raw = self.net(x / (1 + sigma_like(sigma, x) ** 2).sqrt(), t, cond)
        return x0_from_vp_prediction(raw, x, sigma, self.prediction)


class ContinuousVPDenoiser(nn.Module):
    """Song et al. 2021 VP-SDE with linear β(t) on t ∈ [ε, 1]; the network sees t·time_scale."""

    def __init__(
        self,
        net: nn.Module,
        prediction: Prediction = "eps",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        time_scale: float = 999.0,
    ):
        super().__init__()
        x0_from_vp_prediction(torch.zeros(1), torch.zeros(1), torch.ones(1), prediction)  # validate
        self.net, self.prediction = net, prediction
        self.beta_min, self.beta_d, self.time_scale = beta_min, beta_max - beta_min, time_scale

    def sigma_at(self, t: Tensor) -> Tensor:
        """σ(t) = sqrt(exp(½ β_d t² + β_min t) − 1)."""
        return torch.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t).sqrt()

    def time_at(self, sigma: Tensor) -> Tensor:
        """Inverse of ``sigma_at``: the positive root of ½ β_d t² + β_min t − ln(1 + σ²) = 0."""
        c = torch.log1p(sigma**2)
        return (-self.beta_min + (self.beta_min**2 + 2 * self.beta_d * c).sqrt()) / self.beta_d

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Conditioning | None = None) -> Tensor:
        sigma = sigma_vector(sigma, x)
        raw = self.net(
            x / (1 + sigma_like(sigma, x) ** 2).sqrt(), self.time_at(sigma) * self.time_scale, cond
        )
        return x0_from_vp_prediction(raw, x, sigma, self.prediction)


class FlowDenoiser(nn.Module):
    """Rectified flow (Liu et al. 2022; Lipman et al. 2023): the net predicts v = ε − x0 at x_t."""

    def __init__(self, net: nn.Module, time_scale: float = 1.0):
        super().__init__()
        self.net, self.time_scale = net, time_scale

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Conditioning | None = None) -> Tensor:
        sigma = sigma_vector(sigma, x)
        t = sigma_to_flow_time(sigma)  # [B]
        x_t = x / (1 + sigma_like(sigma, x))  # x_t = (1 − t)·x_σ
        velocity = self.net(x_t, t * self.time_scale, cond)
        return x_t - sigma_like(t, x) * velocity


PRECONDITIONINGS = ("edm", "consistency", "flow", "vp_eps", "vp_v", "vp_x0")


def precondition(
    net: nn.Module, kind: str, sigma_data: float = 0.5, alphas_cumprod: Tensor | None = None
) -> nn.Module:
    """Wrap a raw network into a Denoiser by name: one of ``PRECONDITIONINGS``.

    ``vp_*`` kinds are discrete-time DDPM networks and need the ``alphas_cumprod`` table they were
    trained on.
    """
    if kind == "edm":
        return EDMPrecond(net, sigma_data)
    if kind == "consistency":
        return ConsistencyPrecond(net, sigma_data)
    if kind == "flow":
        return FlowDenoiser(net)
    if kind in ("vp_eps", "vp_v", "vp_x0"):
        if alphas_cumprod is None:
            raise ValueError(f"preconditioning {kind!r} needs the alphas_cumprod table of its training")
        return DiscreteVPDenoiser(net, alphas_cumprod, prediction=kind.removeprefix("vp_"))
    raise ValueError(f"unknown preconditioning {kind!r}; valid: {', '.join(PRECONDITIONINGS)}")
