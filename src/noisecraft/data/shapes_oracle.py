"""Read a shapes picture back (colours, kinds, sizes, positions) and check it against a caption.

No learned model: foreground is whatever is chromatic (backgrounds are grey, and mixing a colour
with grey keeps its hue), pieces are connected components, a piece's colour is the hue class of
its pixels and its kind is the template (drawn with the dataset's own code) of best soft IoU.
Prompt adherence of a generator is then ``matches(image, prompt)`` averaged over prompts.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from .shapes import (
    BACKGROUNDS,
    COLOURS,
    KINDS,
    RELATION_PHRASES,
    SIZE_THRESHOLD,
    SIZE_WORDS,
    Scene,
    Shape,
    coverage,
    position_of,
    relation_of,
    unit_moments,
)

CHROMA_THRESHOLD = 0.15  # max−min of RGB in [0, 1]; the palette's weakest colour (green) has 0.51
MIN_AREA = 0.01  # pieces of fewer pixels than this fraction of the image are noise (smallest star: 0.02)


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees [0, 360) of RGB values in [0, 1], [..., 3] → [...]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.degrees(np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b)) % 360


_PALETTE_HUES = {name: float(_hue(np.asarray(rgb, dtype=np.float64) / 255)) for name, rgb in COLOURS.items()}


def _colour_name(hues: np.ndarray, weights: np.ndarray) -> str:
    """The palette colour whose hue is nearest for most of the (weighted) pixels."""
    names = list(_PALETTE_HUES)
    centres = np.asarray([_PALETTE_HUES[n] for n in names])
    dist = np.abs((hues[:, None] - centres[None] + 180) % 360 - 180)  # [P, colours] circular distance
    votes = np.bincount(dist.argmin(1), weights=weights, minlength=len(names))
    return names[int(votes.argmax())]


def _as_rgb(image: torch.Tensor | Image.Image | np.ndarray) -> np.ndarray:
    """[H, W, 3] float64 in [0, 1] from a [3, H, W] tensor in [-1, 1], a PIL image or uint8 [H, W, 3]."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        rgb = image.astype(np.float64) / 255
    else:
        rgb = ((image.detach().double().cpu().movedim(0, -1).numpy() + 1) / 2).clip(0, 1)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] != rgb.shape[1]:
        raise ValueError(
            "need a square RGB image: a [3, H, W] tensor in [-1, 1], a PIL image or uint8 [H, W, 3]"
        )
    return rgb


def _fit_shape(alpha: np.ndarray, size: int) -> tuple[str, float, float, float, float]:
    """(kind, x, y, r, iou) of the template that best explains one piece's coverage map [H, W]."""
    area = alpha.sum()
    ys, xs = np.indices(alpha.shape) + 0.5
    cx, cy = (alpha * xs).sum() / area, (alpha * ys).sum() / area  # pixel units
    best = ("", 0.0, 0.0, 0.0, -1.0)
    for kind in KINDS:
        fill, ox, oy = unit_moments(kind)
        r = np.sqrt(area / fill) / 2  # area = fill · (2r)², in pixels
        x, y = (cx - ox * r) / size, (cy - oy * r) / size  # the box centre, not the centroid
        template = coverage(kind, x, y, r / size, size)
        iou = np.minimum(alpha, template).sum() / np.maximum(alpha, template).sum()
        if iou > best[4]:
            best = (kind, x, y, r / size, iou)
    return best


def read_scene(image: torch.Tensor | Image.Image | np.ndarray) -> Scene:
    """The scene drawn in a square image: background, and shapes largest first."""
    rgb = _as_rgb(image)  # [H, W, 3]
    size = rgb.shape[0]
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])  # [4H, 3]
    bg = np.median(border, axis=0)
    background = min(BACKGROUNDS, key=lambda n: np.abs(np.asarray(BACKGROUNDS[n]) / 255 - bg).sum())
    chroma = rgb.max(-1) - rgb.min(-1)  # [H, W]; equals alpha · chroma(colour) over a grey background
    labels, _ = ndimage.label(chroma > CHROMA_THRESHOLD)
    shapes = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        piece = labels == label
        if piece.sum() < MIN_AREA * size * size:
            continue
        # Coverage: the piece plus its anti-aliased rim, the unlabelled pixels touching it (8-neighbours).
        window = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
        near = np.zeros_like(piece)
        near[window] = ndimage.binary_dilation(piece[window], np.ones((3, 3))) & (labels[window] == 0)
        near |= piece
        full = np.sort(chroma[piece])[int(0.95 * (piece.sum() - 1))]  # the shape's own chroma (interior)
        alpha = np.where(near, (chroma / full).clip(0, 1), 0.0)  # [H, W]
        colour = _colour_name(_hue(rgb[piece]), chroma[piece])
        kind, x, y, r, _ = _fit_shape(alpha, size)
        shapes.append((alpha.sum(), Shape(colour, kind, "small" if r < SIZE_THRESHOLD else "large", x, y, r)))
    shapes.sort(key=lambda t: -t[0])
    return Scene(tuple(s for _, s in shapes), background)


# ---------------------------------------------------------------------------------------------
# Captions as constraints


@dataclass(frozen=True)
class ShapeSpec:
    colour: str | None = None
    kind: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class CaptionSpec:
    """What a caption asserts; None means the caption does not say."""

    shapes: tuple[ShapeSpec, ...]
    relation: str | None = None  # of shapes[0] relative to shapes[1]
    position: str | None = None  # of a lone shape
    background: str | None = None


_SIZE_OF = {w: size for size, words in SIZE_WORDS.items() for w in words}
_POSITION_OF = {"left": "left", "right": "right", "top": "top", "bottom": "bottom"}
_POSITION_OF.update(center="center", middle="center")
_RELATION_OF = sorted(
    ((phrase, rel) for rel, phrases in RELATION_PHRASES.items() for phrase in phrases),
    key=lambda t: -len(t[0]),
)


def parse_caption(caption: str) -> CaptionSpec:
    """Turn a caption in the dataset's vocabulary into constraints (extra words are ignored)."""
    text = " " + " ".join(re.sub(r"[^a-z]+", " ", caption.lower()).split()) + " "
    relation = None
    for phrase, rel in _RELATION_OF:  # longest first: "on the left of" before "left of"
        if f" {phrase} " in text:
            relation, text = rel, text.replace(f" {phrase} ", " | ", 1)
            break
    tokens = text.split()
    background = next(
        (w for w, n in zip(tokens, tokens[1:] + [""]) if n == "background" and w in BACKGROUNDS), None
    )
    shapes, pending, split_at = [], {}, None
    for word in tokens:
        if word == "|":
            split_at = len(shapes)
        elif word in COLOURS:
            pending["colour"] = word
        elif word in _SIZE_OF:
            pending["size"] = _SIZE_OF[word]
        elif word in KINDS:
            shapes.append(ShapeSpec(kind=word, **pending))
            pending = {}
    if not 1 <= len(shapes) <= 2:
        raise ValueError(f"caption names {len(shapes)} shapes, need 1 or 2: {caption!r}")
    if relation is not None and (len(shapes) != 2 or split_at != 1):
        raise ValueError(f"relation in {caption!r} must sit between two shapes")
    position = None
    if len(shapes) == 1:
        position = next((_POSITION_OF[w] for w in tokens if w in _POSITION_OF), None)
    return CaptionSpec(tuple(shapes), relation, position, background)


def spec_of(scene: Scene) -> CaptionSpec:
    """Every checkable fact of a scene as constraints (sizes, position or relation, background)."""
    specs = tuple(ShapeSpec(s.colour, s.kind, s.size) for s in scene.shapes)
    relation = relation_of(*scene.shapes) if len(scene.shapes) == 2 else None
    position = position_of(scene.shapes[0]) if len(scene.shapes) == 1 else None
    return CaptionSpec(specs, relation, position, scene.background)


def satisfies(scene: Scene, spec: CaptionSpec) -> bool:
    """Whether a scene meets every constraint, for some assignment of its shapes to the named ones."""
    if spec.background is not None and spec.background != scene.background:
        return False
    if len(spec.shapes) != len(scene.shapes):
        return False
    for order in itertools.permutations(scene.shapes):
        if not all(
            want.colour in (None, s.colour) and want.kind in (None, s.kind) and want.size in (None, s.size)
            for s, want in zip(order, spec.shapes)
        ):
            continue
        if spec.relation is not None and relation_of(order[0], order[1]) != spec.relation:
            continue
        if spec.position is not None and position_of(order[0]) != spec.position:
            continue
        return True
    return False


def fact_checks(scene: Scene, spec: CaptionSpec) -> dict[str, bool]:
    """Each fact the caption states, checked on its own: ``count`` and ``background`` always
    (background when stated); ``colour``, ``kind``, ``size``, ``position`` and ``relation`` (those
    stated) only when the count is right, under the assignment of pieces that matches most colours
    and kinds. Says *which* facts a generator gets wrong, where ``satisfies`` only says whether all hold."""
    facts = {"count": len(scene.shapes) == len(spec.shapes)}
    if spec.background is not None:
        facts["background"] = scene.background == spec.background
    if not facts["count"]:
        return facts

    def agreement(order: tuple[Shape, ...]) -> int:
        return sum((w.colour == s.colour) + (w.kind == s.kind) for s, w in zip(order, spec.shapes))

    order = max(itertools.permutations(scene.shapes), key=agreement)
    pairs = list(zip(order, spec.shapes))
    facts["colour"] = all(w.colour in (None, s.colour) for s, w in pairs)
    facts["kind"] = all(w.kind in (None, s.kind) for s, w in pairs)
    if any(w.size is not None for w in spec.shapes):
        facts["size"] = all(w.size in (None, s.size) for s, w in pairs)
    if spec.position is not None:
        facts["position"] = position_of(order[0]) == spec.position
    if spec.relation is not None:
        facts["relation"] = relation_of(order[0], order[1]) == spec.relation
    return facts


def matches(image: torch.Tensor | Image.Image | np.ndarray, target: str | Scene | CaptionSpec) -> bool:
    """Whether the image shows what the caption (or every fact of the scene) says."""
    if isinstance(target, str):
        target = parse_caption(target)
    elif isinstance(target, Scene):
        target = spec_of(target)
    return satisfies(read_scene(image), target)
