"""Images in and out: tensors ↔ PIL, PNGs that carry their generation parameters, grids, step strips, GIFs."""

from __future__ import annotations

import io
import json
import math
import os
import stat
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin, UnidentifiedImageError
from torch import Tensor

METADATA_KEY = "noisecraft"  # the PNG text chunk holding the generation parameters as JSON
# The image formats a user's file or upload may be: Pillow is never left to pick any of its ~40
# decoders (EPS would run Ghostscript on it).
READABLE_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_IMAGE_PIXELS = 8192 * 8192  # an image read from a file, checked from its header before decoding


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


def open_image(
    source: str | os.PathLike | bytes, name: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS
) -> Image.Image:
    """A user's image (a regular file or bytes) decoded as PNG, JPEG or WebP only, at most
    ``max_pixels`` (checked from the header before decoding); ValueError naming it otherwise."""
    name = name or str(source)
    stream = io.BytesIO(source) if isinstance(source, bytes) else open_regular(source)
    with stream, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(stream, formats=READABLE_FORMATS)
            pixels = image.width * image.height
            if pixels <= max_pixels:
                image.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as err:  # fmt: skip
            why = "" if isinstance(err, UnidentifiedImageError) else f": {err}"  # its text names a buffer
            formats = ", ".join(READABLE_FORMATS)
            raise ValueError(f"{name}: not a readable image ({formats} only){why}") from None
    if pixels > max_pixels:
        raise ValueError(f"{name}: {image.width}×{image.height} is more than {max_pixels} pixels")
    return image


def open_regular(path: str | os.PathLike) -> io.BufferedReader:
    """A regular file opened for reading; a FIFO or device is refused without blocking on it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{path}: not a regular file")
    return os.fdopen(fd, "rb")


def load_image(
    path: str | os.PathLike, channels: int = 3, size: int | tuple[int, int] | None = None
) -> Tensor:
    """Read an image file as [C, H, W] in [-1, 1], with one clear error for a missing or broken file."""
    with open_image(path) as image:
        return from_pil(image, channels, size)


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


def save_png(
    image: Image.Image,
    path: str | os.PathLike,
    metadata: dict[str, Any] | None = None,
    parameters: str | None = None,
    exclusive: bool = False,
) -> Path:
    """Save a PNG with ``metadata`` as a JSON text chunk (so the image can be regenerated from itself)
    and ``parameters``, AUTOMATIC1111's text of the same settings (``infotext``), for other tools;
    ``exclusive``: FileExistsError rather than replace a file that is there (even one made meanwhile)."""
    info = PngImagePlugin.PngInfo()
    if metadata is not None:
        info.add_text(METADATA_KEY, json.dumps(metadata, sort_keys=True))
    if parameters is not None:
        info.add_text("parameters", parameters)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with create_file(path, exclusive) as f:
        image.save(f, format="PNG", pnginfo=info)
    return path


def create_file(path: Path, exclusive: bool) -> io.BufferedWriter:
    """``path`` opened for writing; ``exclusive`` creates it atomically (O_EXCL) or fails."""
    if not exclusive:
        return open(path, "wb")  # noqa: SIM115 (the caller's with closes it)
    try:
        return open(path, "xb")  # noqa: SIM115
    except FileExistsError:
        raise FileExistsError(f"{path} exists") from None


def path_field(path: str | os.PathLike, keep_paths: bool = False) -> str:
    """How metadata names a local file or folder: its name only (an output shared with others does not
    reveal where files lie), or its absolute path when ``keep_paths``."""
    return str(Path(path).resolve()) if keep_paths else Path(path).name or str(path)


def read_png_text(path: str | os.PathLike) -> dict[str, str]:
    """A PNG's text chunks (a regular file only), with one clear error for a missing or unreadable file."""
    try:
        with open_regular(path) as stream, Image.open(stream, formats=("PNG",)) as image:
            return dict(getattr(image, "text", {}))
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None


def read_png_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The generation parameters saved by ``save_png``; a clear error when the file has none."""
    text = read_png_text(path).get(METADATA_KEY)
    if text is None:
        raise ValueError(f"{path}: carries no noisecraft generation parameters")
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: corrupt generation parameters ({type(err).__name__})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: corrupt generation parameters (not a JSON object)")
    return meta


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


@cache
def label_font(size: int = 11) -> ImageFont.FreeTypeFont:
    """DejaVu Sans, which matplotlib (a dependency) ships: it has σ, which PIL's default font lacks."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(path), size)


def step_strip(rows: list[list[Image.Image]], labels: list[str], scale: int = 4) -> Image.Image:
    """A strip per row (e.g. current sample, predicted clean image) with a label above each column."""
    cells = [[upscale(image, scale) for image in row] for row in rows]
    w, h = cells[0][0].size
    top, pad = 14, 2
    strip = Image.new("RGB", (len(labels) * (w + pad) + pad, top + len(cells) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(strip)
    for j, label in enumerate(labels):
        draw.text((pad + j * (w + pad), 0), label, fill="black", font=label_font())
        for i, row in enumerate(cells):
            strip.paste(row[j].convert("RGB"), (pad + j * (w + pad), top + pad + i * (h + pad)))
    return strip


def save_gif(
    frames: list[Image.Image], path: str | os.PathLike, duration_ms: int = 120, exclusive: bool = False
) -> Path:
    """An animated GIF that holds on its last frame (``exclusive`` as for ``save_png``)."""
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    durations = [duration_ms] * (len(frames) - 1) + [duration_ms * 10]
    with create_file(Path(path), exclusive) as f:
        frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return Path(path)
