"""model.schedule: every σ schedule selectable by our name or A1111's label, with its own ρ default."""

from __future__ import annotations

import pytest
import torch

from noisecraft.model import ModelSettings, SamplingOptions
from noisecraft.model.schedule import SCHEDULES, schedule_label, schedule_sigmas, schedules_for
from noisecraft.schedules import beta_sigmas, polyexponential, sgm_uniform, vp_alphas_cumprod, vp_sigmas


@pytest.mark.parametrize(
    "typed, ours",
    [("Polyexponential", "polyexponential"), ("SGM Uniform", "sgm_uniform"), ("SGMUniform", "sgm_uniform"),
     ("beta", "beta"), ("Beta", "beta"), ("sgm_uniform", "sgm_uniform"), ("KARRAS", "karras")],
)  # fmt: skip
def test_a1111_labels_and_aliases_select_the_schedule(typed: str, ours: str) -> None:
    assert SamplingOptions(schedule=typed).schedule == ours


def test_labels_are_a1111s() -> None:
    labels = {name: schedule_label(name) for name in ("polyexponential", "sgm_uniform", "beta")}
    assert labels == {"polyexponential": "Polyexponential", "sgm_uniform": "SGM Uniform", "beta": "Beta"}


def test_polyexponential_takes_its_own_rho_unless_the_request_sets_one() -> None:
    """A1111 runs Polyexponential at ρ = 1 (its default_rho); the model's ρ = 7 is Karras'."""
    settings = ModelSettings(rho=7.0)
    assert SamplingOptions(schedule="Polyexponential").resolve(settings).rho == 1.0
    assert SamplingOptions(schedule="polyexponential", rho=2.0).resolve(settings).rho == 2.0
    assert SamplingOptions(schedule="karras").resolve(settings).rho == 7.0
    assert SamplingOptions().resolve(ModelSettings(schedule="polyexponential")).rho == 1.0


def test_each_name_gives_its_schedule() -> None:
    lo, hi, n, f64 = 0.002, 80.0, 6, torch.float64
    table = vp_sigmas(vp_alphas_cumprod("scaled_linear", 1000))
    cases = {
        "polyexponential": (polyexponential(n, lo, hi, 1.5, f64), None),
        "beta": (beta_sigmas(n, lo, hi, dtype=f64), None),
        "sgm_uniform": (sgm_uniform(n, lo, hi, dtype=f64), None),
    }
    for name, (expected, tab) in cases.items():
        assert torch.equal(schedule_sigmas(name, n, lo, hi, 1.5, f64, tab), expected), name
    discrete = schedule_sigmas("sgm_uniform", n, table[0].item(), table[-1].item(), 7.0, f64, table)
    assert torch.equal(discrete, sgm_uniform(n, table[0].item(), table[-1].item(), table, f64))


def test_schedules_a_model_can_use() -> None:
    assert schedules_for(True) == list(SCHEDULES)
    continuous = schedules_for(False)
    assert {"karras", "exponential", "polyexponential", "sgm_uniform", "beta"} <= set(continuous)
    assert not {"uniform", "leading", "trailing"} & set(continuous)
