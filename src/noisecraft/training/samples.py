"""Sample previews during training: fixed prompts × fixed seeds, so successive grids are comparable.

Images become a PNG grid (one row per prompt, one column per seed); 2-D points become a scatter
plot (one colour per prompt). Sampling uses the EMA weights and its own seeded generators, so it
never disturbs the training random stream.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..model import LatentSpace, encode_prompts, sample
from .build import TextEncoderFn
from .config import SamplingConfig


def preview_seeds(config: SamplingConfig, per_seed: int) -> list[int]:
    """One seed per sample, prompt-major: seed s of a grid; for point clouds, s·per_seed + j."""
    per_prompt = [s * per_seed + j if per_seed > 1 else s for s in config.seeds for j in range(per_seed)]
    return per_prompt * len(config.prompts)


def draw_samples(
    objective: nn.Module,
    frozen: TextEncoderFn | None,
    config: SamplingConfig,
    shape: tuple[int, ...],
    per_seed: int,
    device: torch.device,
) -> Tensor:
    """len(prompts)·len(seeds)·per_seed samples of one example ``shape``, prompt-major, [N, *shape].

    The model layer's ``sample``, as ``Pipeline.generate`` calls it: a grid cell is the image the
    exported model makes for that prompt and seed with its default options.
    """
    prompts = [prompt for prompt in config.prompts for _ in range(len(config.seeds) * per_seed)]
    encoder = objective.text_encoder if frozen is None else frozen.encoder
    cond = encode_prompts(encoder, prompts)
    options = config.options()
    uncond = encode_prompts(encoder, [""]) if cond is not None and options.guidance != 1.0 else None
    dtype = next(objective.parameters()).dtype
    seeds = preview_seeds(config, per_seed)
    return sample(objective.denoiser, shape, options, seeds, cond, uncond, device=device, dtype=dtype)


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
