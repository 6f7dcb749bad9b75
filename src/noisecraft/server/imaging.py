"""Images over HTTP: base64 in (checked before decoding), base64 PNG out with generation parameters."""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from typing import Any

from PIL import Image, ImageOps, PngImagePlugin

from ..images import METADATA_KEY, READABLE_FORMATS, mask_gray


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
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=READABLE_FORMATS)
            if image.width * image.height > max_pixels:  # checked from the header, before decoding
                raise BadImage(f"{field}: {image.width}×{image.height} is more than {max_pixels} pixels")
            image.load()
    except BadImage:
        raise
    except Exception as err:  # Pillow raises assorted types (OSError, SyntaxError, bomb warnings ...)
        raise BadImage(f"{field}: not a readable image ({type(err).__name__})") from None
    return image


def invert_mask(image: Image.Image) -> Image.Image:
    """A1111's ``inpainting_mask_invert``: what was kept is repainted and the other way round."""
    return ImageOps.invert(mask_gray(image))


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
