"""Cascaded diffusion (Ho et al. 2022, "Cascaded Diffusion Models for High Fidelity Image Generation"):
an upscaling model enlarges a base model's pictures. It sees the low-resolution picture, enlarged back to
its own size, as extra input channels beside x, and fills in the detail the base model could not draw.

Training shrinks each image to the low side and adds Gaussian noise of a random level up to
``noise`` ("conditioning augmentation"), so the upscaler does not copy the base model's small errors
into its output; at sampling the base model's picture goes in as it is."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..samplers import Callback, Step


def check_factor(image_size: int, low_side: int) -> int:
    """How many times larger the upscaler's pictures are than its input's; ValueError if not whole."""
    if low_side < 1 or image_size <= low_side or image_size % low_side:
        raise ValueError(
            f"upscale_from must be a side smaller than the model's {image_size} that divides it, "
            f"got {low_side}"
        )
    return image_size // low_side


def shrink(images: Tensor, factor: int) -> Tensor:
    """[B, C, H, W] → [B, C, H/factor, W/factor]: each low pixel the mean of the pixels it covers."""
    return F.avg_pool2d(images, factor)


def enlarge(low: Tensor, factor: int) -> Tensor:
    """[B, C, h, w] → [B, C, h·factor, w·factor], bilinear: what the upscaler sees beside x."""
    return F.interpolate(low, scale_factor=factor, mode="bilinear", align_corners=False)


def check_small(low: object, shape: tuple[int, ...]) -> Tensor:
    """Given small pictures to enlarge, checked to be a tensor of ``shape`` [B, C, h, w]."""
    if not isinstance(low, Tensor) or tuple(low.shape) != tuple(shape):
        got = tuple(low.shape) if isinstance(low, Tensor) else type(low).__name__
        raise ValueError(f"the pictures to enlarge must be a tensor of shape {tuple(shape)}, got {got}")
    return low


def training_input(
    x0: Tensor, factor: int, noise: float, generator: torch.Generator, batch: int, mine: slice
) -> Tensor:
    """The upscaler's extra channels for training images x0 [b, C, H, W] (this process's ``mine`` slice of
    a global batch of ``batch``): shrunk, noised by σ ~ U(0, noise) per image, enlarged back."""
    low = shrink(x0, factor)  # [b, C, h, w]
    level = (torch.rand(batch, generator=generator) * noise)[mine]  # [b]
    eps = torch.randn((batch, *low.shape[1:]), generator=generator)[mine]  # [b, C, h, w]
    low = low + level.to(low)[:, None, None, None] * eps.to(low)
    return enlarge(low, factor)


BASE_FOLDER = "base"  # an upscaler's folder holds the model that makes its low-resolution pictures here
BASE_PARTS = ("pipeline.json", "net", "text_encoder", "autoencoder")


def copy_base(base: Path, folder: Path) -> Path:
    """Copy the saved model folder ``base`` (its settings and components, not its card) into
    ``folder``/base, replacing what was there."""
    target = folder / BASE_FOLDER
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for part in BASE_PARTS:
        source = base / part
        if source.is_dir():
            shutil.copytree(source, target / part)
        elif source.is_file():
            shutil.copy2(source, target / part)
    return target


def stage_callbacks(callback: Callback | None, factor: int) -> tuple[Callback | None, Callback | None]:
    """The base stage's and the upscaler's callbacks, so ``callback`` sees one walk at the final size:
    the base model's steps (x and x̂0 enlarged, nearest) and then the upscaler's, numbered on."""
    if callback is None:
        return None, None
    done = [0]  # steps the base stage took

    def base(step: Step) -> None:
        done[0] = step.total
        x, denoised = (F.interpolate(t, scale_factor=factor, mode="nearest") for t in (step.x, step.denoised))
        callback(replace(step, x=x, denoised=denoised, total=2 * step.total))

    def upscaler(step: Step) -> None:
        callback(replace(step, index=done[0] + step.index, total=done[0] + step.total))

    return base, upscaler
