"""Training losses: the exact denoiser is a stationary point of every weighting; identities vs peers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from noisecraft.denoisers import ContinuousVPDenoiser, EDMPrecond, FlowDenoiser
from noisecraft.losses import WEIGHTINGS, denoising_loss, flow_matching_loss, mean_discounted_mse

N = 4000  # Monte-Carlo examples for the stationarity tests (2-D, so this is cheap)


def scale_gradients(mixture2d, loss_fn, sigma: torch.Tensor, scale: float) -> torch.Tensor:
    """Per-example ∂loss_i/∂s of the scaled oracle D_s = s·D*, [N]."""
    g = torch.Generator().manual_seed(0)
    x0 = mixture2d.sample(N, g).double()  # [N, 2]
    noise = torch.randn(N, 2, generator=g, dtype=torch.float64)
    s = torch.full((N,), scale, dtype=torch.float64, requires_grad=True)  # one copy per example

    def scaled(x, sig, cond=None):
        return s[:, None] * mixture2d(x, sig)

    (grad,) = torch.autograd.grad(loss_fn(scaled, x0, sigma.double(), noise).sum(), s)
    return grad


LOSSES = {name: (lambda w: lambda *a: denoising_loss(*a, weighting=w))(name) for name in WEIGHTINGS}
LOSSES["flow_matching_loss"] = flow_matching_loss


def as_image_loss(denoiser, x0, sigma, noise):
    """EDM loss with the spatial-mean discount, the 2-D points read as [N, 1, 1, 2] images."""

    def image_denoiser(x, sig, cond=None):  # [N, 1, 1, 2] → [N, 1, 1, 2]
        return denoiser(x.reshape(-1, 2), sig, cond).reshape(x.shape)

    as_image = (t.reshape(-1, 1, 1, 2) for t in (x0, noise))
    return denoising_loss(image_denoiser, next(as_image), sigma, next(as_image), mean_sigma=0.5)


LOSSES["edm_mean_discounted"] = as_image_loss


@pytest.mark.parametrize("name", list(LOSSES))
def test_exact_denoiser_is_stationary(mixture2d, name):
    """∂/∂s E[w‖s·D* − x0‖²] = 2E[w(s·D* − x0)·D*] vanishes at s = 1 because D* = E[x0 | x_σ]."""
    # σ log-uniform on [0.05, 5]: stationarity holds at every σ, and this spread keeps w(σ)·‖D*‖²
    # light-tailed. (EDM's log-normal σ makes 1/σ² weights log-normal with sd 2.4 in log space,
    # which caps the s ≠ 1 signal near 7 SE at any affordable N and hides a wrong oracle.)
    gen = torch.Generator().manual_seed(1)
    sigma = (torch.rand(N, generator=gen, dtype=torch.float64) * math.log(100) + math.log(0.05)).exp()
    for scale, sign in ((1.0, 0), (1.2, 1), (0.8, -1)):
        grad = scale_gradients(mixture2d, LOSSES[name], sigma, scale)
        z = grad.mean() / (grad.std() / math.sqrt(N))  # mean in standard errors
        if sign == 0:
            assert abs(z) < 4, f"{name}: gradient {z:.1f} SE from 0 at the exact denoiser"
        else:
            assert sign * z > 6, f"{name}: gradient at s={scale} only {z:.1f} SE (wrong sign?)"


class Recorder(nn.Module):
    """Wraps a raw network and keeps its last output, so a test sees exactly what the net predicted."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.last = net, None

    def forward(self, x_in, c_noise, cond=None):
        self.last = self.net(x_in, c_noise, cond)
        return self.last


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.05, 0.3, 1.0, 3.0, 20.0], dtype=torch.float64)  # SNR 400 … 0.0025
    return x0, sigma, noise


def mse(a, b):
    return (a - b).pow(2).flatten(1).mean(1)


def test_snr_and_min_snr_equal_eps_mse(toy_eps_net, batch):
    x0, sigma, noise = batch
    net = Recorder(toy_eps_net.double())
    model = ContinuousVPDenoiser(net, prediction="eps")
    loss = denoising_loss(model, x0, sigma, noise, weighting="snr")
    eps_mse = mse(net.last, noise)
    torch.testing.assert_close(loss, eps_mse, rtol=1e-10, atol=0)
    snr, gamma = sigma**-2, 5.0  # Hang et al. 2023, eq. for ε-prediction: min(SNR, γ)/SNR · ε-MSE
    min_snr = denoising_loss(model, x0, sigma, noise, weighting="min_snr", gamma=gamma)
    torch.testing.assert_close(min_snr, snr.clamp(max=gamma) / snr * eps_mse, rtol=1e-10, atol=0)


def test_v_weighting_equals_v_mse(toy_eps_net, batch):
    x0, sigma, noise = batch
    net = Recorder(toy_eps_net.double())
    loss = denoising_loss(ContinuousVPDenoiser(net, prediction="v"), x0, sigma, noise, weighting="v")
    alpha = (1 / (1 + sigma**2).sqrt())[:, None, None, None]  # VP signal scale
    s_vp = (sigma / (1 + sigma**2).sqrt())[:, None, None, None]  # VP noise scale
    v = alpha * noise - s_vp * x0  # Salimans & Ho 2022, v = α·ε − σ_vp·x0
    torch.testing.assert_close(loss, mse(net.last, v), rtol=1e-9, atol=0)


def test_edm_weighting_equals_effective_target_mse(toy_eps_net, batch):
    x0, sigma, noise = batch
    net, sd = Recorder(toy_eps_net.double()), 0.5
    loss = denoising_loss(EDMPrecond(net, sigma_data=sd), x0, sigma, noise, weighting="edm", sigma_data=sd)
    s = sigma[:, None, None, None]
    c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
    target = (x0 - c_skip * (x0 + s * noise)) / c_out  # Karras et al. 2022, eq. 8
    torch.testing.assert_close(loss, mse(net.last, target), rtol=1e-9, atol=0)


def test_flow_matching_equals_velocity_mse(toy_eps_net, batch):
    x0, sigma, noise = batch
    net = Recorder(toy_eps_net.double())
    model = FlowDenoiser(net)
    loss = flow_matching_loss(model, x0, sigma, noise)
    torch.testing.assert_close(loss, mse(net.last, noise - x0), rtol=1e-9, atol=0)
    torch.testing.assert_close(
        denoising_loss(model, x0, sigma, noise, weighting="flow"), loss, rtol=1e-9, atol=0
    )


def test_mean_discount_scales_only_the_spatial_mean_of_the_error():
    g = torch.Generator().manual_seed(0)
    flat = torch.randn(4, 3, 1, 1, generator=g).expand(4, 3, 5, 6)  # [B, C, H, W] constant per channel
    wiggle = torch.randn(4, 3, 5, 6, generator=g)
    wiggle = wiggle - wiggle.mean((2, 3), keepdim=True)  # zero spatial mean per channel
    sigma, x0 = torch.tensor([0.1, 2.0, 10.0, 80.0]), torch.zeros(4, 3, 5, 6)
    keep = 1 / (1 + (sigma / 10.0) ** 2)  # [B]: 0.9999, 0.96, 0.5, 0.015
    got = mean_discounted_mse(x0 + flat + wiggle, x0, sigma, 10.0)
    torch.testing.assert_close(got, mse(wiggle, x0) + keep * mse(flat, x0))
    torch.testing.assert_close(mean_discounted_mse(flat + wiggle, x0, sigma, 0.0), mse(flat + wiggle, x0))
    with pytest.raises(ValueError, match="spatial-mean discount needs images"):
        mean_discounted_mse(torch.ones(4, 2), torch.zeros(4, 2), sigma, 10.0)


def test_uniform_is_x0_mse(mixture2d):
    x0 = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=torch.float64)
    noise, sigma = torch.ones_like(x0), torch.tensor([0.1, 2.0], dtype=torch.float64)
    loss = denoising_loss(mixture2d, x0, sigma, noise, weighting="uniform")
    torch.testing.assert_close(loss, mse(mixture2d(x0 + sigma[:, None] * noise, sigma), x0))


def test_bad_inputs(mixture2d):
    x0 = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="valid: edm, snr, min_snr, v, flow, uniform"):
        denoising_loss(mixture2d, x0, 1.0, torch.zeros_like(x0), weighting="karras")
    with pytest.raises(ValueError, match="noise must have the shape"):
        denoising_loss(mixture2d, x0, 1.0, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="positive"):
        flow_matching_loss(mixture2d, x0, torch.tensor([1.0, 0.0, 1.0]), torch.zeros_like(x0))
    with pytest.raises(ValueError, match="sigma must be a scalar"):
        denoising_loss(mixture2d, x0, torch.ones(2), torch.zeros_like(x0))
