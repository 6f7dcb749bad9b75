"""Bad input to any sampler fails fast, before any denoiser call, with one clear ValueError."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from noisecraft.noise import SeededNoise
from noisecraft.samplers import SAMPLERS, get_sampler

GOOD_SIGMAS = torch.tensor([2.0, 1.0, 0.5, 0.0])

BAD_SIGMAS = {
    "unsorted": (torch.tensor([1.0, 2.0, 0.5, 0.0]), "strictly decreasing"),
    "not ending in 0": (torch.tensor([2.0, 1.0, 0.5]), "end in 0"),
    "NaN": (torch.tensor([2.0, math.nan, 0.5, 0.0]), "NaN"),
    "2-D": (GOOD_SIGMAS[None], "1-D"),
    "a list": ([2.0, 1.0, 0.0], "torch.Tensor"),
}

# Samplers that draw noise with their default options, or with the options given here.
NOISY = {
    "euler_ancestral": {},
    "ddim": {"eta": 1.0},
    "ddpm": {},
    "dpmpp_2s_ancestral": {},
    "dpmpp_2m_sde": {},
    "dpmpp_3m_sde": {},
    "pc": {},
    "heun": {"s_churn": 5.0},
}

BAD_OPTIONS = [
    ("euler_ancestral", {"eta": -0.1}, "eta"),
    ("euler_ancestral", {"s_noise": math.nan}, "s_noise"),
    ("ddim", {"eta": math.inf}, "eta"),
    ("dpmpp_2s_ancestral", {"eta": "1"}, "eta"),
    ("dpmpp_2m_sde", {"solver_type": "rk4"}, "solver_type"),
    ("dpmpp_2m_sde", {"eta": -1.0}, "eta"),
    ("dpmpp_3m_sde", {"s_noise": -1.0}, "s_noise"),
    ("pc", {"snr": -0.16}, "snr"),
    ("pc", {"corrector_steps": 1.5}, "corrector_steps"),
    ("pc", {"corrector_steps": -1}, "corrector_steps"),
]


class CountingDenoiser:
    """Returns x·0.5 and counts calls, so a test can tell that nothing was evaluated."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x: Tensor, sigma: Tensor, cond=None) -> Tensor:
        self.calls += 1
        return x * 0.5


def x_batch(batch: int = 2) -> Tensor:
    return torch.randn(batch, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2.0


def assert_rejected(name: str, x, sigmas, match: str, **kwargs) -> None:
    denoiser = CountingDenoiser()
    with pytest.raises(ValueError, match=match):
        SAMPLERS[name](denoiser, x, sigmas, **kwargs)
    assert denoiser.calls == 0


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("case", sorted(BAD_SIGMAS))
def test_bad_sigmas(name: str, case: str) -> None:
    sigmas, match = BAD_SIGMAS[case]
    assert_rejected(name, x_batch(), sigmas, match)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_bad_x(name: str) -> None:
    assert_rejected(name, torch.randn(16), GOOD_SIGMAS, "batch dimension")  # no batch dimension
    assert_rejected(name, x_batch().numpy(), GOOD_SIGMAS, "batch dimension")  # not a tensor
    x = x_batch()
    x[1, 0, 2, 2] = math.nan
    assert_rejected(name, x, GOOD_SIGMAS, "NaN")


@pytest.mark.parametrize("name", sorted(n for n in NOISY if n in SAMPLERS))
def test_wrong_number_of_generators(name: str) -> None:
    noise = SeededNoise([0, 1, 2])
    assert_rejected(
        name, x_batch(2), GOOD_SIGMAS, "3 seeded generators for a batch of 2", generator=noise, **NOISY[name]
    )


@pytest.mark.parametrize(
    ("name", "opts", "match"), BAD_OPTIONS, ids=[f"{n}-{list(o)[0]}" for n, o, _ in BAD_OPTIONS]
)
def test_bad_options(name: str, opts: dict, match: str) -> None:
    assert_rejected(name, x_batch(), GOOD_SIGMAS, match, **opts)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_good_input_runs(name: str) -> None:
    """The control: the same call with good input works and evaluates the denoiser."""
    denoiser = CountingDenoiser()
    out = SAMPLERS[name](denoiser, x_batch(), GOOD_SIGMAS, generator=torch.Generator().manual_seed(0))
    assert out.shape == x_batch().shape and torch.isfinite(out).all() and denoiser.calls > 0


def test_get_sampler() -> None:
    assert get_sampler("ddpm") is SAMPLERS["ddpm"]
    with pytest.raises(ValueError, match="unknown sampler 'nope'") as info:
        get_sampler("nope")
    assert all(name in str(info.value) for name in SAMPLERS)
