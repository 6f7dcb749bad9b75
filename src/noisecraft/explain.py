"""Pictures that show how diffusion works on 2-D data: forward noising, reverse sampling, the score field.

Everything is exact: the data is a Gaussian mixture and the denoiser is its optimal one, so what
the pictures show is the process itself, not a network's approximation of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor  # noqa: E402

from .audio import SPECTROGRAM, SpectrogramFormat, image_to_waveform, waveform_to_image  # noqa: E402
from .data.tones import TonesDataset  # noqa: E402
from .data.toy2d import toy_mixture  # noqa: E402
from .denoisers import score  # noqa: E402
from .images import step_strip, to_pil  # noqa: E402
from .mixture import GaussianMixtureDenoiser  # noqa: E402
from .model import SamplingOptions, sample  # noqa: E402
from .model.folder import find_model, training_data  # noqa: E402
from .samplers import Step  # noqa: E402
from .schedules import add_noise  # noqa: E402
from .sound_files import colourise  # noqa: E402

LIMIT = 3.2  # half-width of the plotted square


@dataclass
class ExplainConfig:
    """What ``explain_toy2d`` draws."""

    mixture: str = "ring"
    sampler: str = "heun"
    steps: int = 18
    sigma_max: float = 20.0
    num_points: int = 2000
    num_paths: int = 48
    seed: int = 0


def _density_image(ax: plt.Axes, mixture: GaussianMixtureDenoiser, sigma: float, limit: float) -> None:
    """Shade the exact density p_σ on the panel."""
    axis = torch.linspace(-limit, limit, 160)
    grid = torch.cartesian_prod(axis, axis).flip(1)  # [160², 2] rows of (x, y), y outer
    density = mixture.log_prob(grid, sigma).exp().reshape(160, 160)
    ax.imshow(density.numpy(), extent=(-limit, limit, -limit, limit), origin="lower", cmap="Blues", alpha=0.8)


def _panel(ax: plt.Axes, title: str, limit: float = LIMIT) -> None:
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)


def plot_forward(mixture: GaussianMixtureDenoiser, sigmas: list[float], n: int, seed: int) -> plt.Figure:
    """Forward process: the same data points x0 + σ·ε at increasing σ, over the exact density p_σ."""
    g = torch.Generator().manual_seed(seed)
    x0, noise = mixture.sample(n, g), torch.randn(n, 2, generator=g)  # [n, 2] each
    fig, axes = plt.subplots(1, len(sigmas), figsize=(2.6 * len(sigmas), 2.9))
    for ax, sigma in zip(axes, sigmas):
        limit = max(LIMIT, 3 * sigma)
        _density_image(ax, mixture, sigma, limit)
        x = add_noise(x0, noise, sigma).numpy()
        ax.scatter(x[:, 0], x[:, 1], s=1, c="k", alpha=0.4)
        _panel(ax, f"σ = {sigma:g}", limit)
    fig.suptitle("Forward process: x_σ = x0 + σ·ε — data dissolves into Gaussian noise")
    fig.tight_layout()
    return fig


def run_sampler(mixture: GaussianMixtureDenoiser, config: ExplainConfig) -> tuple[Tensor, list[Step]]:
    """Sample ``config.num_points`` points with the exact denoiser; return the result and every Step."""
    options = SamplingOptions(
        steps=config.steps, sampler=config.sampler, guidance=1.0, sigma_min=0.01, sigma_max=config.sigma_max,
        rho=7.0, schedule="karras",
    )  # fmt: skip
    n = config.num_points
    steps: list[Step] = []
    seeds = range(config.seed * n, (config.seed + 1) * n)  # one per point
    out = sample(mixture, (2,), options, seeds, callback=steps.append, rows=n)
    return out, steps


def plot_reverse(mixture: GaussianMixtureDenoiser, config: ExplainConfig) -> plt.Figure:
    """Reverse process: trajectories from noise to data, and the cloud at chosen steps."""
    out, steps = run_sampler(mixture, config)
    picks = sorted({0, len(steps) // 4, len(steps) // 2, (3 * len(steps)) // 4, len(steps) - 1})
    fig, axes = plt.subplots(1, len(picks) + 1, figsize=(2.6 * (len(picks) + 1), 3.0))
    for ax, i in zip(axes, picks):
        limit = max(LIMIT, 3 * steps[i].sigma_next)
        _density_image(ax, mixture, steps[i].sigma_next, limit)
        x = steps[i].x.numpy()
        ax.scatter(x[:, 0], x[:, 1], s=1, c="k", alpha=0.4)
        _panel(ax, f"step {i + 1}/{len(steps)}, σ = {steps[i].sigma_next:.2g}", limit)
    ax = axes[-1]
    _density_image(ax, mixture, 0.0, LIMIT)
    paths = torch.stack([s.x[: config.num_paths] for s in steps], 1).numpy()  # [paths, steps, 2]
    for path in paths:
        ax.plot(path[:, 0], path[:, 1], lw=0.6, color="tab:red", alpha=0.7)
    ax.scatter(paths[:, -1, 0], paths[:, -1, 1], s=6, c="k")
    _panel(ax, "trajectories near the data")
    fig.suptitle(f"Reverse process: {config.sampler}, {config.steps} steps, noise → data")
    fig.tight_layout()
    return fig


def plot_score(mixture: GaussianMixtureDenoiser, sigmas: list[float]) -> plt.Figure:
    """The score ∇ log p_σ(x) = (D(x, σ) − x)/σ² as arrows: it points toward the data."""
    axis = torch.linspace(-LIMIT * 0.9, LIMIT * 0.9, 21)
    grid = torch.cartesian_prod(axis, axis)  # [441, 2]
    fig, axes = plt.subplots(1, len(sigmas), figsize=(3.2 * len(sigmas), 3.4))
    for ax, sigma in zip(axes, sigmas):
        _density_image(ax, mixture, sigma, LIMIT)
        field = score(mixture, grid, sigma)  # [441, 2]
        arrows = field / field.norm(dim=1, keepdim=True).clamp(min=1e-8) ** 0.5  # compress lengths
        ax.quiver(*grid.T.numpy(), *arrows.T.numpy(), color="tab:red", alpha=0.8)
        _panel(ax, f"score at σ = {sigma:g}")
    fig.suptitle("Score function ∇ log p_σ: arrows toward higher density, smoother as σ grows")
    fig.tight_layout()
    return fig


def forward_strip(image: Tensor, sigmas: list[float], seed: int = 0, scale: int = 4) -> Image.Image:
    """The forward process on a real image: x0 + σ·ε at each σ (shown on the VP scale, x/sqrt(1+σ²))."""
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
    frames = [add_noise(image[None], noise[None], s) / (1 + s**2) ** 0.5 for s in sigmas]  # [1, C, H, W]
    cells = [to_pil(frame.clamp(-1, 1))[0] for frame in frames]
    return step_strip([cells], [f"σ={s:g}" for s in sigmas], scale)


def forward_sound(
    wave: Tensor, sigmas: list[float], seed: int = 0, fmt: SpectrogramFormat = SPECTROGRAM
) -> tuple[Image.Image, Tensor]:
    """The forward process on a sound [S]: its spectrogram x0 + σ·ε at each σ (VP scale, coloured), and
    each noisy spectrogram heard (Griffin-Lim seeded ``seed``), one after another with a short gap."""
    image = waveform_to_image(wave[None], fmt)  # [1, 1, M, T]
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
    frames = [(add_noise(image, noise, s) / (1 + s**2) ** 0.5).clamp(-1, 1) for s in sigmas]  # [1, 1, M, T]
    cells = [colourise(to_pil(frame)[0]) for frame in frames]
    strip = step_strip([cells], [f"σ={s:g}" for s in sigmas], scale=4)
    gap = torch.zeros(fmt.sample_rate // 5)  # 0.2 s of silence between clips
    clips = [torch.cat([image_to_waveform(frame, seed, fmt)[0], gap]) for frame in frames]
    return strip, torch.cat(clips)


def shipped_tones(seed: int) -> TonesDataset:
    """One tones clip drawn by ``seed`` as the shipped ``tones`` model hears sounds: its frequency axis
    and notes, read from the data options its ``training.json`` records."""
    options = (training_data(find_model("tones")) or {}).get("options", {})
    heard = {key: options[key] for key in ("f_min", "mel_break_hz", "notes") if key in options}
    return TonesDataset(length=1, seed=seed, **heard)


def explain_toy2d(out_dir: str | Path, config: ExplainConfig | None = None) -> list[Path]:
    """Write forward.png, reverse.png and score.png for a 2-D mixture into ``out_dir``."""
    config = config or ExplainConfig()
    mixture = toy_mixture(config.mixture)
    SamplingOptions(sampler=config.sampler)  # fail early on a bad name
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "forward.png": plot_forward(mixture, [0.0, 0.1, 0.3, 0.7, 1.5, 4.0], config.num_points, config.seed),
        "reverse.png": plot_reverse(mixture, config),
        "score.png": plot_score(mixture, [0.05, 0.3, 1.0, 3.0]),
    }
    paths = []
    for name, fig in figures.items():
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        paths.append(out_dir / name)
    return paths
