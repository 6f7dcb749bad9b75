"""Control maps a user can make, in numpy: a colour layout used as is, an edge map, a scribble, and the same
maps computed from a reference image (Canny edges, dark strokes, a colour-quantised layout).

Every map comes out as a [3, H, W] float tensor in [0, 1] at the size the control needs (white lines on
black for edges and scribbles, as ControlNet's canny and scribble models read them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from .images import open_image

CONTROL_TYPES = ("layout", "edges", "scribble", "canny", "segment")
# What each type does with the given image: used as is, or computed from a reference picture.
CONTROL_TYPE_HELP = {
    "layout": "a colour layout / segmentation map, used as is",
    "edges": "an edge map (white lines on black), used as is",
    "scribble": "a drawing: its dark strokes become white lines on black",
    "canny": "a reference picture: its Canny edges",
    "segment": "a reference picture: its colours quantised into flat regions",
}

# sd-webui-controlnet preprocessor ("module") names → our control types, looked up by the name's first word
# ("scribble_pidinet" → scribble, "invert (from white bg & black line)" → scribble); our own names too.
A1111_MODULES = {"none": "layout", "canny": "canny", "scribble": "scribble", "invert": "scribble",
                 "seg": "segment", "segmentation": "segment", "segment": "segment", "edges": "edges",
                 "layout": "layout"}  # fmt: skip
# Our types → the module an A1111 infotext names: layout and edges make the same map (no preprocessor);
# a scribble is A1111's inverted drawing; segment has no A1111 counterpart, so it keeps our name.
TYPE_MODULES = {"layout": "none", "edges": "none", "scribble": "invert (from white bg & black line)",
                "canny": "canny", "segment": "segment"}  # fmt: skip


def module_type(module: str) -> str | None:
    """Our control type for an sd-webui-controlnet preprocessor name; None for one we cannot make."""
    name = module.strip().lower() or "none"
    if name in A1111_MODULES:
        return A1111_MODULES[name]
    first = name.replace("(", " ").replace("_", " ").split(maxsplit=1)
    return A1111_MODULES.get(first[0]) if first else None


class ControlMapError(ValueError):
    """A control map that cannot be used: not an image, or only an alpha channel."""


def read_map(source: str | Path | bytes | Image.Image) -> Image.Image:
    """An RGB image from a path, bytes or a PIL image; ControlMapError for a non-image or an alpha-only
    map."""
    if isinstance(source, Image.Image):
        image = source
    else:
        try:  # the one reader of a user's image: PNG, JPEG or WebP, a regular file, bounded pixels
            image = open_image(source, f"control map {_name(source)}")
        except (ValueError, OSError) as err:
            raise ControlMapError(str(err)) from None
    if image.mode in ("LA", "RGBA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"))
        if rgba[..., :3].max() == rgba[..., :3].min() and rgba[..., 3].min() < rgba[..., 3].max():
            raise ControlMapError(
                f"control map {_name(source)} has only an alpha channel (its colour is flat): "
                "draw the map in colour, or flatten it onto a background"
            )
    return image.convert("RGB")


def _name(source: object) -> str:
    return "(uploaded)" if isinstance(source, bytes | Image.Image) else str(source)


def gaussian_blur(gray: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [H, W], reflecting at the borders (radius 3σ)."""
    radius = max(1, int(3 * sigma + 0.5))
    t = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    out = ndimage.convolve1d(gray, kernel, axis=0, mode="reflect")
    return ndimage.convolve1d(out, kernel, axis=1, mode="reflect")


def canny(gray: np.ndarray, low: float = 0.1, high: float = 0.2, sigma: float = 1.0) -> np.ndarray:
    """Canny edges (Canny 1986) of a grey image [H, W] in [0, 1] → bool [H, W]: Gaussian blur, Sobel
    gradients, non-maximum suppression across the edge, hysteresis between ``low`` and ``high``
    (thresholds on the gradient magnitude of a unit step, which is 4 for Sobel: so 0.2 = 0.8 / 4)."""
    smooth = gaussian_blur(gray.astype(np.float64), sigma) if sigma > 0 else gray.astype(np.float64)
    gx = ndimage.sobel(smooth, axis=1, mode="reflect")  # d/dx (columns)
    gy = ndimage.sobel(smooth, axis=0, mode="reflect")
    magnitude = np.hypot(gx, gy) / 4  # a unit step gives 1 (times the blur's spread)
    direction = (np.round(np.arctan2(gy, gx) / (np.pi / 4)) % 4).astype(int)  # 0: →, 1: ↘, 2: ↓, 3: ↙
    steps = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}
    padded = np.pad(magnitude, 1)
    h, w = magnitude.shape
    keep = np.zeros_like(magnitude, dtype=bool)
    for d, (dy, dx) in steps.items():
        ahead = padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        behind = padded[1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]
        keep |= (direction == d) & (magnitude >= ahead) & (magnitude > behind)
    thin = np.where(keep, magnitude, 0.0)
    strong, weak = thin >= high, thin >= low
    labels, count = ndimage.label(weak, structure=np.ones((3, 3)))
    connected = np.zeros(count + 1, dtype=bool)
    connected[np.unique(labels[strong])] = True
    connected[0] = False
    return connected[labels]


def scribble(gray: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """A drawing's dark strokes (darker than ``threshold`` and than the page) → bool [H, W]."""
    page = np.median(gray)
    return gray < min(threshold, page - 0.1)


def segment(rgb: np.ndarray, colours: int = 8) -> np.ndarray:
    """Flat colour regions of a reference [H, W, 3] uint8: median-cut quantisation after a small blur."""
    blurred = np.stack([gaussian_blur(rgb[..., c] / 255.0, 1.0) for c in range(3)], -1)
    image = Image.fromarray((blurred * 255).round().astype(np.uint8))
    return np.asarray(image.quantize(colours, method=Image.Quantize.MEDIANCUT).convert("RGB"))


def make_map(image: Image.Image, kind: str, size: tuple[int, int]) -> torch.Tensor:
    """The control map [3, H, W] in [0, 1] of ``kind`` (CONTROL_TYPES) from ``image``, at size (H, W).
    A map of another size is resized first (nearest for flat maps, so their colours stay exact)."""
    if kind not in CONTROL_TYPES:
        raise ControlMapError(f"unknown control type {kind!r}; valid: {', '.join(CONTROL_TYPES)}")
    height, width = size
    flat = kind in ("layout", "edges", "segment")
    resample = Image.Resampling.NEAREST if flat else Image.Resampling.BICUBIC
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), resample)
    rgb = np.asarray(image)
    gray = rgb.astype(np.float64).mean(-1) / 255  # [H, W]
    if kind == "canny":
        out = np.repeat(canny(gray)[..., None], 3, -1).astype(np.float32)
    elif kind == "scribble":
        out = np.repeat(scribble(gray)[..., None], 3, -1).astype(np.float32)
    elif kind == "segment":
        out = segment(rgb).astype(np.float32) / 255
    else:
        out = rgb.astype(np.float32) / 255
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)  # [3, H, W]
