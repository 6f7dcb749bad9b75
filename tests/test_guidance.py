"""Classifier-free guidance against the exact denoiser of a prompt-conditioned Gaussian, and dropout."""

from __future__ import annotations

import math

import pytest
import torch

from noisecraft.conditioning import Conditioning
from noisecraft.guidance import ClassifierFreeGuidance, drop_conditioning

SHAPE = (2, 4)  # per-sample shape of x; a prompt's pooled vector is the mean of x0
DIM = 8


class PromptGaussian:
    """Exact D for x0 ~ N(μ, I) with μ = cond.pooled (the empty prompt: μ = 0); counts its calls.

    E[x0 | x_σ] = (x + σ²μ) / (1 + σ²), so guidance has a closed form: μ_u + s(μ_c − μ_u) in place of μ.
    """

    def __init__(self):
        self.batch_sizes: list[int] = []

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning | None = None
    ) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        s2 = sigma.reshape(-1, 1, 1) ** 2
        return (x + s2 * cond.pooled.reshape(-1, *SHAPE)) / (1 + s2)


def prompts(pooled: torch.Tensor) -> Conditioning:
    """A Conditioning whose pooled vectors are given [B, DIM] (and two tokens each)."""
    tokens = pooled[:, None, :].repeat(1, 2, 1)
    return Conditioning(tokens, torch.ones(pooled.shape[0], 2, dtype=torch.bool), pooled)


def closed_form(x, sigma, mu):
    s2 = sigma.reshape(-1, 1, 1) ** 2
    return (x + s2 * mu.reshape(-1, *SHAPE)) / (1 + s2)


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, *SHAPE, generator=g, dtype=torch.float64) * 2
    sigma = torch.tensor([0.5, 1.5, 4.0], dtype=torch.float64)
    mu_c = torch.randn(3, DIM, generator=g, dtype=torch.float64)
    empty = prompts(torch.zeros(1, DIM, dtype=torch.float64))
    return x, sigma, prompts(mu_c), empty


def test_scale_one_is_the_conditional_with_one_narrow_call(setup):
    x, sigma, cond, empty = setup
    oracle = PromptGaussian()
    out = ClassifierFreeGuidance(oracle, 1.0, empty)(x, sigma, cond)
    assert torch.equal(out, PromptGaussian()(x, sigma, cond))
    assert oracle.batch_sizes == [3]


def test_scale_zero_is_the_unconditional(setup):
    x, sigma, cond, empty = setup
    out = ClassifierFreeGuidance(PromptGaussian(), 0.0, empty)(x, sigma, cond)
    torch.testing.assert_close(out, closed_form(x, sigma, torch.zeros(3, DIM, dtype=torch.float64)))


def test_general_scale_one_batched_call(setup):
    x, sigma, cond, empty = setup
    oracle = PromptGaussian()
    out = ClassifierFreeGuidance(oracle, 3.5, empty)(x, sigma, cond)
    assert oracle.batch_sizes == [6]  # conditional and unconditional halves in ONE call
    c, u = PromptGaussian()(x, sigma, cond), PromptGaussian()(x, sigma, empty.repeat(3))
    torch.testing.assert_close(out, u + 3.5 * (c - u))
    torch.testing.assert_close(out, closed_form(x, sigma, 3.5 * cond.pooled))  # μ_u = 0


def test_negative_prompt_replaces_the_empty_one(setup):
    x, sigma, cond, _ = setup
    negative = prompts(torch.linspace(-1, 1, DIM, dtype=torch.float64)[None])
    out = ClassifierFreeGuidance(PromptGaussian(), 2.0, negative)(x, sigma, cond)
    torch.testing.assert_close(
        out, closed_form(x, sigma, negative.pooled + 2.0 * (cond.pooled - negative.pooled))
    )
    per_sample = prompts(torch.randn(3, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    out = ClassifierFreeGuidance(PromptGaussian(), 2.0, per_sample)(x, sigma, cond)
    mu = per_sample.pooled + 2.0 * (cond.pooled - per_sample.pooled)
    torch.testing.assert_close(out, closed_form(x, sigma, mu))


def test_rescale_matches_the_conditional_std(setup):
    x, sigma, cond, empty = setup
    c = PromptGaussian()(x, sigma, cond)
    guided = ClassifierFreeGuidance(PromptGaussian(), 5.0, empty)(x, sigma, cond)
    full = ClassifierFreeGuidance(PromptGaussian(), 5.0, empty, rescale=1.0)(x, sigma, cond)
    std = lambda t: t.std(dim=(1, 2))  # noqa: E731
    assert (std(guided)[1:] > 1.5 * std(c)[1:]).all()  # at σ ≥ 1.5 guidance inflates the spread
    torch.testing.assert_close(std(full), std(c))
    half = ClassifierFreeGuidance(PromptGaussian(), 5.0, empty, rescale=0.5)(x, sigma, cond)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * guided)  # φ mixes rescaled and plain guidance


def test_sigma_interval(setup):
    x, sigma, cond, empty = setup  # σ = 0.5, 1.5, 4.0
    oracle = PromptGaussian()
    out = ClassifierFreeGuidance(oracle, 3.0, empty, sigma_interval=(1.0, 2.0))(x, sigma, cond)
    assert oracle.batch_sizes == [4]  # 3 conditional + 1 unconditional copy, one call
    c = PromptGaussian()(x, sigma, cond)
    guided = closed_form(x, sigma, 3.0 * cond.pooled)
    torch.testing.assert_close(out[[0, 2]], c[[0, 2]])
    torch.testing.assert_close(out[1], guided[1])
    oracle = PromptGaussian()
    out = ClassifierFreeGuidance(oracle, 3.0, empty, sigma_interval=(5.0, math.inf))(x, sigma, cond)
    assert oracle.batch_sizes == [3] and torch.equal(out, c)  # outside everywhere: no doubled call


def test_scalar_sigma_and_single_prompt_broadcast(setup):
    x, _, cond, empty = setup
    one = cond[:1]
    out = ClassifierFreeGuidance(PromptGaussian(), 2.0, empty)(x, 1.5, one)
    sigma = torch.full((3,), 1.5, dtype=torch.float64)
    torch.testing.assert_close(out, closed_form(x, sigma, 2.0 * one.pooled.expand(3, -1)))


def test_guidance_bad_input(setup):
    x, sigma, cond, empty = setup
    oracle = PromptGaussian()
    with pytest.raises(ValueError, match="needs a Conditioning"):
        ClassifierFreeGuidance(oracle, 2.0, empty)(x, sigma, None)
    with pytest.raises(ValueError, match="uncond has 2 prompts"):
        ClassifierFreeGuidance(oracle, 2.0, Conditioning.cat([empty, empty]))(x, sigma, cond)
    for kwargs in ({"rescale": 1.5}, {"sigma_interval": (2.0, 1.0)}, {"scale": math.nan}):
        with pytest.raises(ValueError):
            ClassifierFreeGuidance(oracle, **{"scale": 2.0, "uncond": empty, **kwargs})


# --- condition dropout ---------------------------------------------------------------------------


def batch_and_empty(n: int = 64) -> tuple[Conditioning, Conditioning]:
    g = torch.Generator().manual_seed(2)
    cond = Conditioning(
        torch.randn(n, 5, 4, generator=g), torch.ones(n, 5, dtype=torch.bool), torch.randn(n, 4)
    )
    empty = Conditioning(
        torch.full((1, 2, 4), 7.0), torch.ones(1, 2, dtype=torch.bool), torch.full((1, 4), 7.0)
    )
    return cond, empty


def test_drop_conditioning_extremes():
    cond, empty = batch_and_empty()
    kept = drop_conditioning(cond, empty, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(kept.tokens, cond.tokens) and torch.equal(kept.mask, cond.mask)
    assert torch.equal(kept.pooled, cond.pooled)
    dropped = drop_conditioning(cond, empty, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(dropped.pooled, empty.pooled.expand(64, -1))
    assert dropped.mask.sum(1).tolist() == [2] * 64 and (dropped.tokens[:, 2:] == 0).all()


def test_drop_conditioning_reproducible_and_rate():
    cond, empty = batch_and_empty(4000)
    a = drop_conditioning(cond, empty, 0.3, torch.Generator().manual_seed(5))
    b = drop_conditioning(cond, empty, 0.3, torch.Generator().manual_seed(5))
    c = drop_conditioning(cond, empty, 0.3, torch.Generator().manual_seed(6))
    assert torch.equal(a.pooled, b.pooled) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.pooled, c.pooled)
    rate = (a.pooled[:, 0] == 7.0).double().mean()
    assert abs(rate - 0.3) < 0.03  # 4 standard deviations: sqrt(0.3·0.7/4000) ≈ 0.0072
    with pytest.raises(ValueError):
        drop_conditioning(cond, empty, 1.5, None)
    with pytest.raises(ValueError, match="exactly one prompt"):
        drop_conditioning(cond, cond, 0.5, None)
