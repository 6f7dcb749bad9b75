"""Gaussian mixtures with their exact noised density and optimal denoiser: the oracle for 2-D data
(``data/toy2d.py``), for the pictures of ``explain`` and for checking samplers and losses exactly."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .conditioning import Conditioning
from .schedules import sigma_like


class GaussianMixtureDenoiser(nn.Module):
    """The exact optimal denoiser E[x0 | x_σ] of a Gaussian mixture Σ_k w_k N(μ_k, Σ_k), any dimension.

    Inputs of shape [B, ...] are flattened to [B, d]. Each covariance is diagonalised once
    (Σ_k = U Λ Uᵀ) so any σ costs O(K·d²): (Σ_k + σ²I)⁻¹ = U diag(1/(λ + σ²)) Uᵀ.
    """

    def __init__(self, means: Tensor, covs: Tensor, weights: Tensor | None = None):
        super().__init__()
        means, covs = torch.as_tensor(means, dtype=torch.float64), torch.as_tensor(covs, dtype=torch.float64)
        if means.ndim != 2 or covs.shape != (*means.shape, means.shape[1]):
            raise ValueError(
                f"need means [K, d] and covs [K, d, d], got {tuple(means.shape)}, {tuple(covs.shape)}"
            )
        if not (torch.isfinite(means).all() and torch.isfinite(covs).all()):
            raise ValueError("means and covs must be finite")
        if not torch.allclose(covs, covs.mT):  # eigh would silently read only the lower triangle
            raise ValueError("every covariance must be symmetric")
        k = means.shape[0]
        weights = torch.full((k,), 1.0 / k) if weights is None else torch.as_tensor(weights)
        weights = weights.to(torch.float64)
        if (
            weights.shape != (k,)
            or not torch.isfinite(weights).all()
            or (weights < 0).any()
            or weights.sum() <= 0
        ):
            raise ValueError(f"weights must be {k} finite non-negative numbers with a positive sum")
        eigvals, eigvecs = torch.linalg.eigh(covs)  # [K, d], [K, d, d]
        if (eigvals < -1e-9).any():
            raise ValueError("every covariance must be positive semi-definite")
        self.register_buffer("means", means)
        self.register_buffer("covs", covs)
        self.register_buffer("weights", weights / weights.sum())
        self.register_buffer("eigvals", eigvals.clamp(min=0))
        self.register_buffer("eigvecs", eigvecs)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _components(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """Per-component whitened offsets z, variances λ + σ², and log w_k N(x; μ_k, Σ_k + σ²I)."""
        flat = x.reshape(x.shape[0], -1).to(torch.float64)  # [B, d]
        if flat.shape[1] != self.dim:
            raise ValueError(f"mixture has dimension {self.dim}, input has {flat.shape[1]} per sample")
        s2 = sigma_like(sigma, flat).reshape(-1).to(torch.float64) ** 2  # [B]
        z = torch.einsum("kdj,bkd->bkj", self.eigvecs, flat[:, None] - self.means)  # [B, K, d]
        var = self.eigvals[None] + s2[:, None, None]  # [B, K, d]
        log_norm = -0.5 * (z**2 / var + var.log() + math.log(2 * math.pi)).sum(-1)  # [B, K]
        return z, var, log_norm + self.weights.log()

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Conditioning | None = None) -> Tensor:
        z, var, log_joint = self._components(x, sigma)
        resp = torch.softmax(log_joint, dim=1)  # [B, K] posterior over components
        shrunk = self.eigvals[None] / var * z  # [B, K, d] Σ_k (Σ_k + σ²I)⁻¹ (x − μ_k), rotated
        post = self.means + torch.einsum("kjd,bkd->bkj", self.eigvecs, shrunk)  # [B, K, d]
        return (resp[..., None] * post).sum(1).reshape(x.shape).to(x.dtype)

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """log p_σ(x), the exact density of the noised mixture, shape [B] (float64)."""
        return torch.logsumexp(self._components(x, sigma)[2], dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws from the clean mixture, [n, d] float32."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # [n]
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        roots = self.eigvecs * self.eigvals.sqrt()[:, None, :]  # [K, d, d] U Λ^½
        return (self.means[k] + torch.einsum("ndj,nj->nd", roots[k], eps)).float()
