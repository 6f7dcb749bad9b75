"""2-D Gaussian mixtures: the smallest data a diffusion model can learn, with an exact denoiser."""

from __future__ import annotations

import math

import torch

from ..denoisers import GaussianMixtureDenoiser

TOY_MIXTURES = ("ring", "grid", "moons")


def toy_mixture(name: str = "ring") -> GaussianMixtureDenoiser:
    """A named 2-D mixture (data scale ≈ 1) as its exact denoiser; ``.sample()`` draws data."""
    if name == "ring":  # eight tight components on a circle
        angles = torch.arange(8) * (2 * math.pi / 8)
        means = torch.stack([angles.cos(), angles.sin()], 1) * 1.5
        covs = torch.eye(2).expand(8, 2, 2) * 0.02
        return GaussianMixtureDenoiser(means, covs)
    if name == "grid":  # a 3×3 grid, unequal weights
        axis = torch.tensor([-1.2, 0.0, 1.2])
        means = torch.cartesian_prod(axis, axis)
        weights = torch.arange(1, 10, dtype=torch.float64)
        return GaussianMixtureDenoiser(means, torch.eye(2).expand(9, 2, 2) * 0.015, weights)
    if name == "moons":  # two crescents, each a chain of elongated components
        a = torch.linspace(0, math.pi, 7)
        upper = torch.stack([a.cos(), a.sin()], 1) - torch.tensor([0.5, 0.25])
        lower = torch.stack([1 - a.cos(), 0.5 - a.sin()], 1) - torch.tensor([0.5, 0.25])
        means = torch.cat([upper, lower]) * 1.2
        tangents = torch.stack([-a.sin(), a.cos()], 1).repeat(2, 1)  # [14, 2]
        covs = 0.004 * torch.eye(2) + 0.03 * tangents[:, :, None] * tangents[:, None, :]
        return GaussianMixtureDenoiser(means, covs)
    raise ValueError(f"unknown toy mixture {name!r}; valid: {', '.join(TOY_MIXTURES)}")
