"""Consistency models: the boundary condition, the multistep sampler on an exact consistency function,
and the distillation objective against a teacher whose ODE is solved in closed form."""

from __future__ import annotations

import torch
from conftest import ODEMap

from noisecraft.cli import main
from noisecraft.denoisers import ConsistencyPrecond, GaussianMixtureDenoiser
from noisecraft.pipeline import Pipeline
from noisecraft.samplers import SAMPLERS
from noisecraft.schedules import karras
from noisecraft.training.config import TrainConfig, from_dict
from noisecraft.training.distill import ConsistencyObjective, draw_grid_sigma, grid, grid_below

MEAN, VAR = torch.tensor([0.7, -0.4]), torch.tensor([0.3, 0.05])  # one Gaussian, diagonal covariance


class GaussianODEMap(torch.nn.Module):
    """The exact consistency function of N(μ, diag(v)): along the probability-flow ODE each coordinate
    keeps (x − μ)/sqrt(v + σ²), so f(x, σ) = μ + (x − μ)·sqrt((v + σ_min²)/(v + σ²))."""

    def __init__(self, sigma_min: float = 0.002):
        super().__init__()
        self.sigma_min = sigma_min

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        s = sigma.reshape(-1, 1).to(x.dtype)
        return MEAN + (x - MEAN) * ((VAR + self.sigma_min**2) / (VAR + s**2)).sqrt()


def gaussian() -> GaussianMixtureDenoiser:
    return GaussianMixtureDenoiser(MEAN[None], torch.diag(VAR)[None])


def test_boundary_condition_and_edm_limit():
    net = lambda x, c_noise, cond=None: torch.sin(3 * x) + c_noise.reshape(-1, 1)  # noqa: E731
    f = ConsistencyPrecond(net, sigma_data=0.5)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(f(x, torch.full((4,), 0.002, dtype=torch.float64)), x)  # c_skip = 1, c_out = 0
    s, sd = 1.5, 0.5  # away from σ_min: Song et al.'s c_skip, c_out, EDM's c_in, c_noise
    c_skip, c_out = sd**2 / ((s - 0.002) ** 2 + sd**2), (s - 0.002) * sd / (s**2 + sd**2) ** 0.5
    expected = c_skip * x + c_out * net(x / (s**2 + sd**2) ** 0.5, torch.full((4,), s).log() / 4)
    assert torch.allclose(f(x, torch.full((4,), s, dtype=torch.float64)), expected, atol=1e-12)


def test_one_step_reproduces_the_ode_endpoint():
    """With the exact consistency function, 1 step from σ_max is where the ODE lands at σ_min."""
    x = 80.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    one = SAMPLERS["consistency"](GaussianODEMap(), x, karras(1, 0.002, 80.0, dtype=torch.float64))
    solved = ODEMap(gaussian(), steps=800)(x, torch.full((64,), 80.0, dtype=torch.float64))
    assert torch.allclose(one, solved, atol=1e-4)  # Heun's error: 5e-4 at 200 steps, 3e-5 at 800
    assert not torch.allclose(one, MEAN.double().expand(64, 2), atol=1e-2)  # not collapsed to the mean


def test_multistep_draws_with_seeded_noise_at_the_chosen_sigmas():
    sigmas = torch.tensor([80.0, 2.0, 0.5, 0.0], dtype=torch.float64)
    x = 80.0 * torch.randn(3, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    seen = []
    f = GaussianODEMap()
    out = SAMPLERS["consistency"](
        f,
        x,
        sigmas,
        generator=torch.Generator().manual_seed(3),
        callback=lambda step: seen.append(step.sigma),
    )
    g = torch.Generator().manual_seed(3)
    expected = f(x, sigmas[:1].expand(3))
    for s in sigmas[1:3]:  # Song et al. 2023, Algorithm 1
        expected = f(expected + s * torch.randn(3, 2, generator=g, dtype=torch.float64), s.expand(3))
    assert torch.allclose(out, expected, atol=1e-12) and seen == [80.0, 2.0, 0.5]


def test_grid_pairs_are_adjacent_karras_points():
    c = from_dict(TrainConfig, {"model": {"precond": "consistency"}, "distill": {"teacher": "x"},
                                "schedule": {"kind": "karras_grid", "grid_steps": 6}})  # fmt: skip
    points = grid(c.schedule)  # σ_min … σ_max
    drawn = draw_grid_sigma(c.schedule, 500, torch.Generator().manual_seed(0)).double()
    assert set(drawn.tolist()) <= set(points[1:].float().double().tolist()) and len(set(drawn.tolist())) == 5
    assert torch.allclose(grid_below(points[1:], c.schedule), points[:-1], rtol=1e-9)


def distillation_loss(student: torch.nn.Module, solver: str) -> torch.Tensor:
    """The mean loss of ``student`` against the Gaussian's exact denoiser as teacher, 256 examples."""
    values = {"model": {"precond": "consistency"}, "schedule": {"kind": "karras_grid"},
              "distill": {"teacher": "x", "solver": solver, "target_decay": 0.5}}  # fmt: skip
    config = from_dict(TrainConfig, values)
    g = torch.Generator().manual_seed(4)
    x0 = MEAN + VAR.sqrt() * torch.randn(256, 2, generator=g)
    sigma, noise = draw_grid_sigma(config.schedule, 256, g), torch.randn(256, 2, generator=g)
    return ConsistencyObjective(student, gaussian(), None, config)(x0, sigma, noise, None).mean()


def test_distillation_loss_is_near_zero_only_for_the_exact_consistency_function():
    """Measured: Heun 0.0037, Euler 0.022 for the exact f (the teacher's step error on 18 points);
    0.088 for the denoiser in f's place."""
    exact = distillation_loss(GaussianODEMap(), "heun")
    assert exact < 0.01 < distillation_loss(gaussian(), "heun")
    assert exact < distillation_loss(GaussianODEMap(), "euler") / 3  # Heun's step is second order


def test_distill_command_resumes_and_exports_a_one_step_model(tmp_path, capsys):
    out = tmp_path / "run"
    tiny = ["--set", "optim.batch_size=4", "checkpoint.every=1", "sampling.every=0", "log.progress=false"]
    assert main(["distill", "mnist", "--out", str(out), "--steps", "1", *tiny]) == 0
    assert main(["distill", "mnist", "--out", str(out), "--steps", "2", "--resume", *tiny]) == 0
    pipe = Pipeline.load(out / "model")
    assert pipe.config.precond == "consistency" and pipe.config.sampler == "consistency"
    (image,) = pipe.generate(["a handwritten 3"], steps=1, seed=0)
    assert image.size == (28, 28)
    assert main(["distill", "no-such-model", "--out", str(tmp_path / "x")]) == 2
    assert main(["distill", "mnist", "--out", str(tmp_path / "y"), "--set", "distill.solver=rk4"]) == 2
    assert "distill.solver" in capsys.readouterr().err


def test_pseudo_huber_is_quadratic_near_zero_and_linear_far_out():
    from noisecraft.losses import pseudo_huber

    a = torch.tensor([[3.0, 4.0], [1e-3, 0.0]], dtype=torch.float64)
    d = pseudo_huber(a, torch.zeros_like(a), 1.0)
    assert torch.allclose(d, torch.tensor([26**0.5 - 1, (1 + 1e-6) ** 0.5 - 1], dtype=torch.float64))
    assert abs(float(d[1]) - 1e-6 / 2) < 1e-12  # ≈ ‖·‖²/(2c) for a small error
