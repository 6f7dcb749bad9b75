"""Power-function EMA of the weights (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models" (EDM2), sec. 3.1 and appendix C).

After step t the average is θ̂_t = β_t·θ̂_{t−1} + (1 − β_t)·θ_t with β_t = (1 − 1/t)^(γ+1). Unrolled,
θ_τ carries weight (τ^(γ+1) − (τ−1)^(γ+1)) / t^(γ+1): a profile ∝ τ^γ over the whole run, whose
length grows with training instead of being a fixed number of steps as in a constant-β EMA.
Its width relative to t is σ_rel = sqrt((γ+1) / ((γ+2)²(γ+3))), the knob EDM2 tunes.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn


def std_to_gamma(sigma_rel: float) -> float:
    """EDM2 eq. 3 inverted: the γ ≥ 0 whose power profile has relative width σ_rel ∈ (0, 0.2887)."""
    if not 0.0 < sigma_rel < (1 / 12) ** 0.5:  # σ_rel(γ = 0) = sqrt(1/12)
        raise ValueError(f"EMA σ_rel must be in (0, {(1 / 12) ** 0.5:.4f}), got {sigma_rel}")
    # σ_rel²(γ+2)²(γ+3) = γ+1  ⇔  γ³ + 7γ² + (16 − 1/σ²)γ + (12 − 1/σ²) = 0; take the largest real root
    t = sigma_rel**-2
    roots = np.roots([1.0, 7.0, 16.0 - t, 12.0 - t])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def gamma_to_std(gamma: float) -> float:
    """EDM2 eq. 3: σ_rel = sqrt((γ+1) / ((γ+2)²(γ+3)))."""
    return ((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))) ** 0.5


class PowerEMA:
    """A power-function EMA copy of a module's parameters and buffers; ``module`` is the averaged copy."""

    def __init__(self, model: nn.Module, std: float):
        self.std, self.gamma = std, std_to_gamma(std)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def beta(self, t: int) -> float:
        """β_t = (1 − 1/t)^(γ+1); β_1 = 0, so the first update copies the weights."""
        if t < 1:
            raise ValueError(f"EMA step must be >= 1, got {t}")
        return (1.0 - 1.0 / t) ** (self.gamma + 1.0)

    @torch.no_grad()
    def update(self, model: nn.Module, t: int) -> None:
        """Blend in the weights after training step t (1-based): θ̂ ← β_t·θ̂ + (1 − β_t)·θ."""
        weight = 1.0 - self.beta(t)
        averaged = [p for p in self.module.parameters()]
        current = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(averaged, current, weight)  # θ̂ + w·(θ − θ̂)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)  # running statistics etc. are not averaged

    def state_dict(self) -> dict[str, Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.module.load_state_dict(state)
