"""Sample previews during training: fixed prompts × fixed seeds, so successive grids are comparable.

Images become a PNG grid (one row per prompt, one column per seed); 2-D points become a scatter
plot (one colour per prompt). Sampling uses the EMA weights and its own generators, so it never
disturbs the training random stream.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..guidance import ClassifierFreeGuidance
from ..samplers import get_sampler
from ..schedules import karras
from .build import LatentSpace, TextEncoderFn
from .config import SamplingConfig


def _conditioning(objective: nn.Module, frozen: TextEncoderFn | None, prompts: list[str]):
    if frozen is not None:
        return frozen(prompts)
    return objective.encode(prompts)


@torch.no_grad()
def draw_samples(
    objective: nn.Module,
    frozen: TextEncoderFn | None,
    config: SamplingConfig,
    shape: tuple[int, ...],
    per_seed: int,
    device: torch.device,
) -> Tensor:
    """len(prompts)·len(seeds)·per_seed samples of one example ``shape``, prompt-major, [N, *shape]."""
    groups = [(prompt, seed) for prompt in config.prompts for seed in config.seeds]
    prompts = [prompt for prompt, _ in groups for _ in range(per_seed)]
    generators = [torch.Generator(device).manual_seed(seed) for _, seed in groups]
    noise = torch.cat([torch.randn((per_seed, *shape), generator=g, device=device) for g in generators])
    # one image per seed: per-sample generators make each image independent of the batch it is in
    generator = generators if per_seed == 1 else generators[0]
    cond = _conditioning(objective, frozen, prompts)
    denoiser = objective.denoiser
    if cond is not None and config.guidance != 1.0:
        denoiser = ClassifierFreeGuidance(denoiser, config.guidance, _conditioning(objective, frozen, [""]))
    sigmas = karras(config.steps, config.sigma_min, config.sigma_max).to(device)
    dtype = next(objective.parameters()).dtype
    x = noise.to(dtype) * sigmas[0]
    sigmas = sigmas.to(dtype)
    return get_sampler(config.sampler)(denoiser, x, sigmas, cond, generator=generator)


def save_image_grid(images: Tensor, rows: int, path: Path) -> None:
    """Images [N, C, H, W] in [-1, 1] as one PNG, ``rows`` rows, 2-pixel gaps."""
    n, c, h, w = images.shape
    cols = n // rows
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    canvas = torch.full((c, rows * (h + 2) + 2, cols * (w + 2) + 2), 255, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        canvas[:, 2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + col * (w + 2) : 2 + col * (w + 2) + w] = pixels[
            i
        ]
    array = canvas.permute(1, 2, 0).numpy()
    Image.fromarray(array[..., 0] if c == 1 else array[..., :3]).save(path)


def save_scatter(points: Tensor, groups: int, labels: list[str], path: Path) -> None:
    """2-D points [N, 2], in ``groups`` equal consecutive groups, as a scatter plot PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for points_g, label in zip(points.float().cpu().chunk(groups), labels):
        ax.scatter(*np.asarray(points_g).T, s=2, alpha=0.5, label=label or "(no prompt)")
    ax.set_aspect("equal")
    ax.set_xlim(-3, 3)
    ax.set_ylim(-3, 3)
    if groups > 1:
        ax.legend(loc="upper right", fontsize=7)
    fig.savefig(path)
    plt.close(fig)


def write_samples(
    objective: nn.Module,
    frozen: TextEncoderFn | None,
    config: SamplingConfig,
    latent: LatentSpace,
    shape: tuple[int, ...],
    device: torch.device,
    path: Path,
) -> Path:
    """Sample and write the preview for the current weights; returns the PNG path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    points = len(shape) == 1
    samples = draw_samples(objective, frozen, config, shape, config.points if points else 1, device)
    if points:
        save_scatter(samples, len(config.prompts), list(config.prompts), path)
    else:
        save_image_grid(latent.decode(samples), len(config.prompts), path)
    return path
