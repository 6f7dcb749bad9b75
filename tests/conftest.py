"""Shared fixtures: the exact 2-D mixture oracle and a toy ε-network for peer comparisons."""

from __future__ import annotations

import pytest
import torch

from noisecraft.denoisers import GaussianMixtureDenoiser

# One thread per test process: tiny tensors run fastest single-threaded, and `make test` runs
# two test processes side by side (pytest-xdist) to use both cores.
torch.set_num_threads(1)


def make_mixture2d() -> GaussianMixtureDenoiser:
    """Three well-separated, unequally weighted, correlated 2-D Gaussians (data scale ≈ 1)."""
    means = torch.tensor([[-1.5, -0.5], [1.2, -0.8], [0.0, 1.4]])
    covs = torch.tensor(
        [
            [[0.10, 0.04], [0.04, 0.06]],
            [[0.05, -0.02], [-0.02, 0.12]],
            [[0.15, 0.00], [0.00, 0.03]],
        ]
    )
    return GaussianMixtureDenoiser(means, covs, torch.tensor([0.5, 0.3, 0.2]))


@pytest.fixture
def mixture2d() -> GaussianMixtureDenoiser:
    return make_mixture2d()


class ToyEpsNet(torch.nn.Module):
    """A fixed, smooth ε-prediction 'network' eps(x_vp, t): nonlinear in x and in t, no training."""

    def __init__(self, channels: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.mix = torch.nn.Parameter(torch.randn(channels, channels, generator=g) / channels**0.5)
        self.bias = torch.nn.Parameter(torch.randn(channels, generator=g))

    def forward(self, x_in: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x_in.dtype).reshape(-1, *([1] * (x_in.ndim - 1)))
        mixed = torch.einsum("ij,bj...->bi...", self.mix, x_in)
        phase = self.bias.reshape(1, -1, *([1] * (x_in.ndim - 2)))
        return torch.tanh(mixed + 0.5 * torch.sin(t / 150.0 + phase)) * 0.8 + 0.2 * x_in


@pytest.fixture
def toy_eps_net() -> ToyEpsNet:
    return ToyEpsNet()
