"""Images over HTTP: base64 in (checked before decoding), base64 PNG out with generation parameters."""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any

from PIL import Image, PngImagePlugin

from ..images import METADATA_KEY, open_image


class BadImage(ValueError):
    """A client's image that cannot be used; the message names the field."""


def decode_image(data: str, field: str, max_pixels: int) -> Image.Image:
    """A base64 image (optionally a ``data:image/...;base64,`` URL) → a loaded PIL image."""
    if not isinstance(data, str) or not data:
        raise BadImage(f"{field}: expected a base64-encoded image")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadImage(f"{field}: not valid base64") from None
    try:
        image = open_image(raw, field, max_pixels)
    except ValueError as err:
        raise BadImage(str(err)) from None
    return image


def binary_mask(image: Image.Image, size: int | tuple[int, int], invert: bool = False) -> Image.Image:
    """A size×size (or (width, height)) black/white mask: white (repaint) where the client's mask is
    mostly white.

    A mask with transparency is read from its alpha channel (painted = opaque), as A1111 does.
    """
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        alpha = image.convert("RGBA").getchannel("A")
        gray = alpha if alpha.getextrema() != (255, 255) else image.convert("L")
    else:
        gray = image.convert("L")
    size = (size, size) if isinstance(size, int) else tuple(size)
    gray = gray.resize(size, Image.Resampling.BOX)  # area average, then threshold at half
    return gray.point(lambda v: 0 if (v >= 128) == invert else 255)


def fit_output(image: Image.Image, width: int, height: int) -> Image.Image:
    """The model's image stretched to width×height (nearest neighbour keeps small images crisp)."""
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.NEAREST)


def encode_png(image: Image.Image, text: dict[str, Any] | None = None) -> str:
    """Base64 PNG; ``text`` entries become PNG text chunks (dicts as JSON)."""
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value if isinstance(value, str) else json.dumps(value, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def png_text(image: Image.Image, infotext: str | None = None) -> dict[str, Any]:
    """The text chunks of an output PNG: A1111's ``parameters`` line and noisecraft's JSON metadata."""
    text: dict[str, Any] = {}
    if infotext is not None:
        text["parameters"] = infotext
    if METADATA_KEY in image.info:
        text[METADATA_KEY] = image.info[METADATA_KEY]
    return text
