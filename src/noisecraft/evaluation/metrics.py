"""Distances between feature sets: Fréchet distance (FID), kernel MMD (KID), k-NN precision/recall.

Everything is computed in float64: FID subtracts traces of 2048×2048 matrices that nearly cancel,
and float32 loses several digits there.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _as_features(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be a [N, D] feature tensor with N ≥ 2")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return x.to(torch.float64)


def gaussian_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean [D] and unbiased covariance [D, D] (divided by N − 1, as in the reference FID code)."""
    x = _as_features(features, "features")
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / (x.shape[0] - 1)


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix; tiny negative eigenvalues (rounding) become 0."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor) -> float:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) between two Gaussians (Dowson & Landau 1982; FID, Heusel 2017).

    tr (Σ1Σ2)^½ is taken as the sum of square roots of the eigenvalues of Σ1^½ Σ2 Σ1^½, which is
    symmetric PSD and similar to Σ1Σ2 — no non-symmetric sqrtm and no complex round-off to discard.
    """
    mean1, mean2 = mean1.to(torch.float64), mean2.to(torch.float64)
    cov1, cov2 = cov1.to(torch.float64), cov2.to(torch.float64)
    d = mean1.shape[0]
    if mean2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(
            f"shapes do not match: means {tuple(mean1.shape)}, {tuple(mean2.shape)}, "
            f"covariances {tuple(cov1.shape)}, {tuple(cov2.shape)}"
        )
    root1 = _psd_sqrt(cov1)
    middle = root1 @ cov2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = (mean1 - mean2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt
    return max(float(value), 0.0)  # a set against itself can come out at −1e-10 from rounding


def fid_from_features(features1: Tensor, features2: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D], [M, D]."""
    return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))


# ----------------------------------------------------------------------------------------------
# KID: Bińkowski et al. 2018, "Demystifying MMD GANs".


def polynomial_kernel(x: Tensor, y: Tensor) -> Tensor:
    """k(x, y) = (xᵀy / d + 1)³, the kernel of KID; [N, D], [M, D] → [N, M]."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: Tensor, y: Tensor) -> float:
    """Unbiased estimate of MMD² (Gretton et al. 2012, eq. 3): within-set sums leave out i = j."""
    x, y = _as_features(x, "x"), _as_features(y, "y")
    m, n = x.shape[0], y.shape[0]
    kxx, kyy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * polynomial_kernel(x, y).mean())


def kid(
    x: Tensor,
    y: Tensor,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """KID: mean and standard deviation over random subsets (without replacement) of unbiased MMD².

    Subsets have min(subset_size, N, M) elements, as in the reference implementation; the mean is
    unbiased whatever the subset size (each subset's estimate is).
    """
    x, y = _as_features(x, "x"), _as_features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature widths differ: {x.shape[1]} and {y.shape[1]}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be positive, got {num_subsets}")
    size = min(subset_size, x.shape[0], y.shape[0])
    values = torch.tensor(
        [
            mmd2_unbiased(
                x[torch.randperm(x.shape[0], generator=generator)[:size]],
                y[torch.randperm(y.shape[0], generator=generator)[:size]],
            )
            for _ in range(num_subsets)
        ],
        dtype=torch.float64,
    )
    std = float(values.std()) if num_subsets > 1 else math.nan
    return float(values.mean()), std


# ----------------------------------------------------------------------------------------------
# Precision and recall: Kynkäänniemi et al. 2019, "Improved precision and recall metric".


def _squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """‖a_i − b_j‖² [N, M], clamped at 0 (the expansion can round slightly below)."""
    return (a.square().sum(1)[:, None] + b.square().sum(1)[None] - 2 * a @ b.T).clamp(min=0)


def knn_radii(features: Tensor, k: int = 3, chunk: int = 1024) -> Tensor:
    """Squared distance from each point to its k-th nearest other point in the same set, [N]."""
    if not 1 <= k < features.shape[0]:
        raise ValueError(f"need 1 ≤ k < number of points, got k={k} for {features.shape[0]} points")
    # the k + 1 smallest distances of a row include the point itself (0)
    return torch.cat(
        [
            _squared_distances(rows, features).topk(k + 1, dim=1, largest=False).values[:, k]
            for rows in features.split(chunk)
        ]
    )


def _fraction_covered(points: Tensor, centres: Tensor, radii: Tensor, chunk: int = 1024) -> float:
    """Fraction of points inside at least one ball (centre_j, radius_j) — the k-NN manifold estimate."""
    inside = [
        (_squared_distances(rows, centres) <= radii[None]).any(1) for rows in points.split(chunk)
    ]  # [chunk] each
    return float(torch.cat(inside).double().mean())


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Precision: fraction of fake samples inside the real manifold; recall: real inside the fake one.

    Each manifold is the union of balls around its points reaching their k-th nearest neighbour.
    """
    real, fake = _as_features(real, "real"), _as_features(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature widths differ: {real.shape[1]} and {fake.shape[1]}")
    precision = _fraction_covered(fake, real, knn_radii(real, k))
    recall = _fraction_covered(real, fake, knn_radii(fake, k))
    return precision, recall
