"""Helpers shared by the datasets: per-item seeds and turning a picture into a [-1, 1] tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..images import open_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")  # images.READABLE_FORMATS


def index_seed(seed: int, index: int, salt: int = 0) -> int:
    """A well-mixed 63-bit seed for (seed, index, salt) (splitmix64), so nearby indices are unrelated."""
    z = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + salt * 0x94D049BB133111EB) % 2**64
    for mul in (0xBF58476D1CE4E5B9, 0x94D049BB133111EB):
        z = ((z ^ (z >> 31)) * mul) % 2**64
    return (z ^ (z >> 31)) >> 1


def item_generator(seed: int, index: int, salt: int = 0) -> torch.Generator:
    """The generator behind every random choice of one item, so item i is reproducible on its own."""
    return torch.Generator().manual_seed(index_seed(seed, index, salt))


def decode_rgb(source: bytes | str | Path, name: str | None = None) -> Image.Image:
    """Fully decode an image as RGB (transparency composited on white); ValueError naming it if unreadable."""
    image = open_image(source, name)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (antialiased), then crop the centre square."""
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as float [C, H, W] in [-1, 1] (C = 3 for RGB, 1 for L)."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1  # [H, W, C] or [H, W]
    tensor = torch.from_numpy(array)
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()
