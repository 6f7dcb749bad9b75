"""Images in and out: tensors ↔ PIL, PNGs that carry their generation parameters, grids, step strips, GIFs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, PngImagePlugin, UnidentifiedImageError
from torch import Tensor

METADATA_KEY = "noisecraft"  # the PNG text chunk holding the generation parameters as JSON
# The image formats a user's file or upload may be: Pillow is never left to pick any decoder it has
# (EPS would run Ghostscript).
READABLE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


def to_pil(images: Tensor) -> list[Image.Image]:
    """[B, C, H, W] in [-1, 1] (C = 1 or 3) → list of 8-bit PIL images (L or RGB)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, 1 or 3, H, W], got {tuple(images.shape)}")
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).numpy()  # [B, H, W, C]
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]


def from_pil(image: Image.Image, channels: int = 3, size: int | tuple[int, int] | None = None) -> Tensor:
    """A PIL image → [C, H, W] in [-1, 1]; resized (Lanczos) to size×size (or (width, height)) if given."""
    image = image.convert("RGB" if channels == 3 else "L")
    size = (size, size) if isinstance(size, int) else size
    if size is not None and image.size != tuple(size):
        image = image.resize(tuple(size), Image.Resampling.LANCZOS)
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    data = data.reshape(image.height, image.width, channels).permute(2, 0, 1)  # [C, H, W]
    return data.float() / 127.5 - 1


def open_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file, loaded, with one clear error for a missing or broken file."""
    try:
        with Image.open(path, formats=READABLE_FORMATS) as image:
            image.load()
            return image
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None


def load_image(
    path: str | os.PathLike, channels: int = 3, size: int | tuple[int, int] | None = None
) -> Tensor:
    """Read an image file as [C, H, W] in [-1, 1], resized to ``size`` if given."""
    return from_pil(open_image(path), channels, size)


def mask_gray(image: Image.Image) -> Image.Image:
    """A mask image as grey levels, white = repaint; a mask with transparency is read from its alpha
    channel (painted = opaque), as AUTOMATIC1111 does."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha
    return image.convert("L")


def mask_from_pil(image: Image.Image, size: tuple[int, int]) -> Tensor:
    """A mask image of any size → [1, H, W] in {0, 1} at size (width, height), 1 = repaint: the grey
    levels area-averaged to the size, then thresholded at half."""
    gray = mask_gray(image).resize(size, Image.Resampling.BOX)
    data = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).reshape(1, size[1], size[0])
    return (data >= 128).float()


def save_png(image: Image.Image, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Save a PNG with ``metadata`` as a JSON text chunk (so the image can be regenerated from itself)."""
    info = PngImagePlugin.PngInfo()
    if metadata is not None:
        info.add_text(METADATA_KEY, json.dumps(metadata, sort_keys=True))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, pnginfo=info)
    return path


def read_png_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The generation parameters saved by ``save_png``; a clear error when the file has none."""
    try:
        with Image.open(path, formats=("PNG",)) as image:
            text = getattr(image, "text", {}).get(METADATA_KEY)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None
    if text is None:
        raise ValueError(f"{path}: carries no noisecraft generation parameters")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupt generation parameters ({err})") from None


def make_grid(images: list[Image.Image], columns: int | None = None, pad: int = 2) -> Image.Image:
    """Tile images (all the same size) into one picture, ``columns`` wide (default: near-square)."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    grid = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), "white")
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), (pad + (i % columns) * (w + pad), pad + (i // columns) * (h + pad)))
    return grid


def upscale(image: Image.Image, factor: int) -> Image.Image:
    """Nearest-neighbour enlargement, so small images stay crisp when looked at."""
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def step_strip(rows: list[list[Image.Image]], labels: list[str], scale: int = 4) -> Image.Image:
    """A strip per row (e.g. current sample, predicted clean image) with a label above each column."""
    cells = [[upscale(image, scale) for image in row] for row in rows]
    w, h = cells[0][0].size
    top, pad = 14, 2
    strip = Image.new("RGB", (len(labels) * (w + pad) + pad, top + len(cells) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(strip)
    for j, label in enumerate(labels):
        draw.text((pad + j * (w + pad), 1), label, fill="black")
        for i, row in enumerate(cells):
            strip.paste(row[j].convert("RGB"), (pad + j * (w + pad), top + pad + i * (h + pad)))
    return strip


def save_gif(frames: list[Image.Image], path: str | os.PathLike, duration_ms: int = 120) -> Path:
    """An animated GIF that holds on its last frame."""
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    durations = [duration_ms] * (len(frames) - 1) + [duration_ms * 10]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return Path(path)
