"""Images over HTTP: base64 in (checked before decoding), base64 PNG out with generation parameters."""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from typing import Any

from PIL import Image, PngImagePlugin
from torch import Tensor

from ..audio import SpectrogramFormat
from ..images import METADATA_KEY, READABLE_FORMATS, mask_from_pil
from ..infotext import PARAMETERS_KEY, infotext
from ..sound_files import WAV_MEDIA_TYPE, clip_waveform, spectrogram_picture, wav_bytes


class BadImage(ValueError):
    """A client's image that cannot be used; the message names the field."""


def decode_image(data: str, field: str, max_pixels: int) -> Image.Image:
    """A base64 image (optionally a ``data:image/...;base64,`` URL) → a loaded PIL image."""
    return load_image(open_image(data, field, max_pixels), field)


def open_image(data: str, field: str, max_pixels: int) -> Image.Image:
    """A base64 image, its header read and its size checked, its pixels not decoded yet (``load_image``)."""
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
    except Exception as err:  # Pillow raises assorted types (OSError, SyntaxError, bomb warnings ...)
        raise BadImage(f"{field}: not a readable image ({type(err).__name__})") from None
    if image.width * image.height > max_pixels:  # checked from the header, before decoding
        raise BadImage(f"{field}: {image.width}×{image.height} is more than {max_pixels} pixels")
    return image


def load_image(image: Image.Image, field: str) -> Image.Image:
    """Decode the pixels of an ``open_image``; BadImage naming the field when they are broken."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except Exception as err:
        raise BadImage(f"{field}: not a readable image ({type(err).__name__})") from None
    return image


def model_mask(image: Image.Image, size: tuple[int, int], invert: bool = False) -> Tensor:
    """A client's mask of any size as [1, H, W] in {0, 1} at the model's ``size`` (1 = repaint), by the
    library's one rule (``images.mask_from_pil``); ``invert``: A1111's ``inpainting_mask_invert``."""
    mask = mask_from_pil(image, size)
    return 1 - mask if invert else mask


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


def png_text(image: Image.Image, parameters: str | None = None) -> dict[str, Any]:
    """The text chunks of an output PNG: noisecraft's JSON metadata and A1111's ``parameters`` text
    (``parameters``, or built from the metadata)."""
    text: dict[str, Any] = {}
    if METADATA_KEY in image.info:
        text[METADATA_KEY] = image.info[METADATA_KEY]
        parameters = parameters or infotext(image.info[METADATA_KEY])
    if parameters is not None:
        text[PARAMETERS_KEY] = parameters
    return text


def encode_output(image: Image.Image, seed: int, audio: SpectrogramFormat | None = None) -> dict[str, str]:
    """One output as data URLs: the PNG with its parameters; for a sound model (``audio``) the WAV heard
    with the clip's ``seed`` (its parameters in its chunks) and the spectrogram picture as the image."""
    text = png_text(image)
    if audio is None:
        return {"image": "data:image/png;base64," + encode_png(image, text), "media_type": "image/png"}
    meta, parameters = text.get(METADATA_KEY), text.get(PARAMETERS_KEY)
    wav = wav_bytes(clip_waveform(image, seed, audio), audio.sample_rate, meta, parameters)
    return {
        "audio": f"data:{WAV_MEDIA_TYPE};base64," + base64.b64encode(wav).decode("ascii"),
        "media_type": WAV_MEDIA_TYPE,
        "image": "data:image/png;base64," + encode_png(spectrogram_picture(image, audio), text),
    }
