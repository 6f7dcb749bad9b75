"""2-D Gaussian mixtures: the smallest data a diffusion model can learn, with an exact denoiser."""

from __future__ import annotations

import math

import torch

from ..mixture import GaussianMixtureDenoiser

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


_COMPASS = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")


def component_names(name: str) -> list[str]:
    """A short caption per mixture component, in component order."""
    if name == "ring":  # components at angles 0, 45°, … counter-clockwise from +x
        return [f"the {d} point of the ring" for d in _COMPASS]
    if name == "grid":  # means = cartesian_prod(axis, axis): x = axis[i // 3], y = axis[i % 3]
        cols, rows = ("left", "middle", "right"), ("bottom", "middle", "top")
        names = [f"the {rows[i % 3]} {cols[i // 3]} cell of the grid" for i in range(9)]
        names[4] = "the center cell of the grid"
        return names
    if name == "moons":
        return ["the upper moon"] * 7 + ["the lower moon"] * 7
    raise ValueError(f"unknown toy mixture {name!r}; valid: {', '.join(TOY_MIXTURES)}")


class Toy2DDataset(torch.utils.data.Dataset):
    """``length`` fixed draws (point [2], caption naming its component) from a named mixture.

    Points keep the mixture's own scale (≈ 1, not clipped to [-1, 1]) so ``self.denoiser`` stays the
    exact optimal denoiser of this data.
    """

    def __init__(self, mixture: str = "ring", length: int = 10_000, seed: int = 0):
        if length < 1:
            raise ValueError(f"need length ≥ 1, got {length}")
        self.denoiser = toy_mixture(mixture)
        self.names = component_names(mixture)
        g = torch.Generator().manual_seed(seed)
        d = self.denoiser
        self.components = torch.multinomial(d.weights, length, replacement=True, generator=g)  # [N]
        eps = torch.randn(length, d.dim, generator=g, dtype=torch.float64)  # [N, 2]
        roots = d.eigvecs * d.eigvals.sqrt()[:, None, :]  # [K, 2, 2] U Λ^½, so x = μ + U Λ^½ ε
        self.points = (
            d.means[self.components] + torch.einsum("ndj,nj->nd", roots[self.components], eps)
        ).float()

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        return self.points[index], self.names[int(self.components[index])]

    @property
    def captions(self) -> list[str]:
        return sorted(set(self.names))
