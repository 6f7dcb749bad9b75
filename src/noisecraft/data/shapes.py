"""Procedural shapes: one or two coloured shapes on a plain background, with templated captions.

Every scene is a pure function of (seed, split, index), so the dataset is map-style and resuming
training at a stored data position reproduces the exact same images and captions. Geometry is kept
in fractions of the image side, so one scene renders at any resolution. The drawing is analytic
(supersampled point-in-shape tests), so ``shapes_oracle`` can re-render candidate shapes with
exactly the same code when it reads a picture back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch.utils.data import Dataset

from .common import item_generator

# Saturated colours ~50-85° apart in hue, so a slightly-off generated colour is still unambiguous.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),  # hue 0°
    "yellow": (240, 210, 20),  # 52°
    "green": (40, 170, 60),  # 129°
    "cyan": (20, 200, 200),  # 180°
    "blue": (30, 70, 230),  # 228°
    "purple": (160, 50, 220),  # 279°
}
# Achromatic backgrounds: mixing a colour with grey keeps its hue, so edges never change colour name.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
KINDS = ("circle", "square", "triangle", "star")
# Half-extent r (fraction of the image side) per size word; the gap between ranges lets the oracle
# read size back without ambiguity. Two large shapes (r ≤ 0.22) still fit side by side with a gap.
SIZES: dict[str, tuple[float, float]] = {"small": (0.12, 0.15), "large": (0.19, 0.22)}
SIZE_THRESHOLD = 0.17
POSITIONS = ("left", "right", "top", "bottom", "center")
RELATIONS = ("left of", "right of", "above", "below")
# Colour×kind combinations never drawn in the training split: the held-out split always contains
# one, so its captions are unseen in training while every colour and every kind is seen.
HELDOUT = frozenset({("purple", "circle"), ("yellow", "triangle"), ("cyan", "square"), ("green", "star")})
SPLITS = ("train", "heldout")

MARGIN = 0.02  # minimum distance from a shape's bounding box to the image border
GAP = 0.06  # minimum gap between the two bounding boxes along the relation axis (≈ 2 px at 32)
CENTER_RADIUS = 0.1  # |offset| below this reads as "center"

SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
POSITION_PHRASES = {
    "left": ("on the left", "on the left side", "at the left"),
    "right": ("on the right", "on the right side", "at the right"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "center": ("in the center", "in the middle"),
}
RELATION_PHRASES = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
SINGLE_TEMPLATES = (
    "a {a} {pos}",
    "a {a}",
    "a picture of a {a} {pos}",
    "a {a} {pos} on a {bg} background",
    "a {a} on a {bg} background",
    "there is a {a} {pos}",
)
PAIR_TEMPLATES = (
    "a {a} {rel} a {b}",
    "a {a} {rel} a {b} on a {bg} background",
    "a picture of a {a} {rel} a {b}",
    "a {a} and a {b}",
    "there is a {a} {rel} a {b}",
)


@dataclass(frozen=True)
class Shape:
    """One shape: its bounding box is the square of half-side r centred at (x, y) (image fractions)."""

    colour: str
    kind: str
    size: str
    x: float  # 0 = left edge, 1 = right edge
    y: float  # 0 = top edge, 1 = bottom edge
    r: float


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: str


def position_of(shape: Shape) -> str:
    """The position word of a lone shape: center, else the dominant direction from the middle."""
    dx, dy = shape.x - 0.5, shape.y - 0.5
    if max(abs(dx), abs(dy)) < CENTER_RADIUS:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def relation_of(a: Shape, b: Shape) -> str:
    """Where a lies relative to b, along the dominant axis of their offset."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


# ---------------------------------------------------------------------------------------------
# Drawing


def _star_polygon() -> np.ndarray:
    """A five-pointed star (inner/outer radius 0.5, fat enough to survive 32×32) scaled to fill [-1, 1]²."""
    angles = np.deg2rad(-90 + 36 * np.arange(10))
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.5)
    pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)  # [10, 2]
    lo, hi = pts.min(0), pts.max(0)
    return (pts - (lo + hi) / 2) / ((hi - lo) / 2)


POLYGONS = {
    "triangle": np.array([[0.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]),  # upright, fills its box
    "star": _star_polygon(),
}


def _inside_polygon(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd crossing test of points (u, v) against a closed polygon [N, 2], all edges at once."""
    u, v = np.broadcast_arrays(u, v)
    (x0, y0), (x1, y1) = poly.T[:, :, None, None], np.roll(poly, -1, axis=0).T[:, :, None, None]  # [N, 1, 1]
    straddles = (y0 > v) != (y1 > v)  # [N, *u.shape]
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
    return np.logical_xor.reduce(straddles & (u < x_cross), axis=0)


def _inside_unit(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of points in the unit shape whose bounding box is [-1, 1]²."""
    if kind == "circle":
        return u * u + v * v <= 1.0
    if kind == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 1.0
    if kind in POLYGONS:
        return _inside_polygon(u, v, POLYGONS[kind])
    raise ValueError(f"unknown shape kind {kind!r}; valid: {', '.join(KINDS)}")


def coverage(kind: str, x: float, y: float, r: float, size: int, supersample: int = 4) -> np.ndarray:
    """Fraction of each pixel covered by the shape, [size, size] float64, by supersampling its box only."""
    cx, cy, rp = x * size, y * size, r * size  # pixel units; pixel i spans [i, i + 1)
    x0, x1 = max(math.floor(cx - rp) - 1, 0), min(math.ceil(cx + rp) + 1, size)
    y0, y1 = max(math.floor(cy - rp) - 1, 0), min(math.ceil(cy + rp) + 1, size)
    out = np.zeros((size, size))
    if x1 <= x0 or y1 <= y0:
        return out
    offsets = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(x0, x1)[:, None] + offsets).ravel()  # [(x1 - x0) * s]
    ys = (np.arange(y0, y1)[:, None] + offsets).ravel()
    inside = _inside_unit(kind, (xs[None, :] - cx) / rp, (ys[:, None] - cy) / rp)  # [ny * s, nx * s]
    out[y0:y1, x0:x1] = inside.reshape(y1 - y0, supersample, x1 - x0, supersample).mean((1, 3))
    return out


@cache
def unit_moments(kind: str) -> tuple[float, float, float]:
    """(fill, centroid_x, centroid_y) of a kind relative to its box: area/(2r)² and centroid offset / r."""
    n = 512
    cov = coverage(kind, 0.5, 0.5, 0.5, n, supersample=1)
    grid = (np.arange(n) + 0.5) / n * 2 - 1  # pixel centres in [-1, 1]
    area = cov.sum()
    return (
        float(area / n**2),
        float((cov.sum(0) * grid).sum() / area),
        float((cov.sum(1) * grid).sum() / area),
    )


def render(scene: Scene, size: int = 32) -> torch.Tensor:
    """Draw a scene as a float image [3, size, size] in [-1, 1]; edges are anti-aliased by coverage."""
    img = np.empty((size, size, 3))
    img[:] = np.asarray(BACKGROUNDS[scene.background], dtype=np.float64) / 255
    for s in scene.shapes:
        alpha = coverage(s.kind, s.x, s.y, s.r, size)[..., None]  # [H, W, 1]
        img = img * (1 - alpha) + alpha * (np.asarray(COLOURS[s.colour]) / 255)
    return torch.from_numpy(img).permute(2, 0, 1).float() * 2 - 1  # [3, H, W]


# Layout maps (the control training data): each shape's region in its kind's colour, on black.
KIND_COLOURS: dict[str, tuple[int, int, int]] = {
    "circle": (255, 0, 0),
    "square": (0, 255, 0),
    "triangle": (0, 0, 255),
    "star": (255, 255, 0),
}


def layout_map(scene: Scene, size: int = 32) -> torch.Tensor:
    """The scene's layout, [3, size, size] in [0, 1]: black, each shape's coverage in ``KIND_COLOURS``."""
    img = np.zeros((size, size, 3))
    for s in scene.shapes:
        alpha = coverage(s.kind, s.x, s.y, s.r, size)[..., None]  # [H, W, 1]
        img = img * (1 - alpha) + alpha * (np.asarray(KIND_COLOURS[s.kind]) / 255)
    return torch.from_numpy(img).permute(2, 0, 1).float()  # [3, H, W]


def layout_caption(scene: Scene) -> str:
    """A caption naming colours and kinds only, not where or how big: 'a red circle and a blue star'."""
    return " and ".join(f"a {s.colour} {s.kind}" for s in scene.shapes)


# ---------------------------------------------------------------------------------------------
# Sampling scenes and captions (every draw from one torch.Generator)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g, dtype=torch.float64).item()


def _choice(g: torch.Generator, options: tuple | list) -> object:
    return options[int(torch.randint(len(options), (), generator=g))]


def _identity(g: torch.Generator, split: str, held: bool, avoid: tuple[str, str] | None) -> tuple[str, str]:
    """A (colour, kind) pair: held-out combos only when held, never in the training split."""
    combos = [
        (c, k)
        for c in COLOURS
        for k in KINDS
        if ((c, k) in HELDOUT) == held and (c, k) != avoid and (split == "heldout" or (c, k) not in HELDOUT)
    ]
    return _choice(g, combos)


def _size(g: torch.Generator) -> tuple[str, float]:
    word = _choice(g, tuple(SIZES))
    return word, _uniform(g, *SIZES[word])


def _place_single(g: torch.Generator, r: float) -> tuple[float, float]:
    """A centre whose position word is unambiguous: |offset| ≥ 0.17 along a dominant axis, or near 0."""
    word = _choice(g, POSITIONS)
    if word == "center":
        return 0.5 + _uniform(g, -0.05, 0.05), 0.5 + _uniform(g, -0.05, 0.05)
    along = _uniform(g, 0.17, 0.5 - r - MARGIN)
    across = _uniform(g, -0.5, 0.5) * along  # dominance ratio ≤ 1/2 keeps the oracle's margin
    along = -along if word in ("left", "top") else along
    return (0.5 + along, 0.5 + across) if word in ("left", "right") else (0.5 + across, 0.5 + along)


def _place_pair(g: torch.Generator, ra: float, rb: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """Centres of two shapes separated by a gap along one axis, with a dominant offset on that axis."""
    lo, hi = ra + rb + GAP, 1 - ra - rb - 2 * MARGIN
    d = _uniform(g, lo, hi)  # offset along the relation axis, second shape after the first
    a_along = _uniform(g, ra + MARGIN, 1 - rb - MARGIN - d)
    a_across = _uniform(g, ra + MARGIN, 1 - ra - MARGIN)
    e_lo, e_hi = max(-0.5 * d, rb + MARGIN - a_across), min(0.5 * d, 1 - rb - MARGIN - a_across)
    b_along, b_across = a_along + d, a_across + _uniform(g, e_lo, e_hi)
    if _choice(g, ("x", "y")) == "x":
        return (a_along, a_across), (b_along, b_across)
    return (a_across, a_along), (b_across, b_along)


def sample_scene(g: torch.Generator, split: str = "train", pair_fraction: float = 0.6) -> Scene:
    """One or two shapes (two with probability ``pair_fraction``) on a background, from the given split."""
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; valid: {', '.join(SPLITS)}")
    background = _choice(g, tuple(BACKGROUNDS))
    first = _identity(g, split, held=split == "heldout", avoid=None)
    if torch.rand((), generator=g).item() < 1 - pair_fraction:
        word, r = _size(g)
        x, y = _place_single(g, r)
        return Scene((Shape(*first, word, x, y, r),), background)
    second = _identity(g, split, held=False, avoid=first)
    (wa, ra), (wb, rb) = _size(g), _size(g)
    pa, pb = _place_pair(g, ra, rb)
    if torch.rand((), generator=g).item() < 0.5:  # which identity comes first on the axis is a coin flip
        first, second = second, first
    return Scene((Shape(*first, wa, *pa, ra), Shape(*second, wb, *pb, rb)), background)


def _describe_shape(g: torch.Generator, s: Shape) -> str:
    """'red circle', or with a size word half of the time: 'little red circle'."""
    size = _choice(g, SIZE_WORDS[s.size]) + " " if torch.rand((), generator=g).item() < 0.5 else ""
    return f"{size}{s.colour} {s.kind}"


def describe(scene: Scene, g: torch.Generator) -> str:
    """A caption from one of several templates; every shape is named by colour and kind."""
    if len(scene.shapes) == 1:
        (s,) = scene.shapes
        template = _choice(g, SINGLE_TEMPLATES)
        pos = _choice(g, POSITION_PHRASES[position_of(s)])
        return template.format(a=_describe_shape(g, s), pos=pos, bg=scene.background)
    a, b = scene.shapes if torch.rand((), generator=g).item() < 0.5 else scene.shapes[::-1]
    template = _choice(g, PAIR_TEMPLATES)
    rel = _choice(g, RELATION_PHRASES[relation_of(a, b)])
    return template.format(a=_describe_shape(g, a), b=_describe_shape(g, b), rel=rel, bg=scene.background)


class ShapesDataset(Dataset):
    """Map-style procedural scenes: item i is (image [3, size, size] in [-1, 1], caption), a pure
    function of (seed, split, i). ``length`` is how many distinct items an epoch has; ``pair_fraction``
    how many scenes hold two shapes (a recipe can raise it to practise relations)."""

    def __init__(
        self,
        size: int = 32,
        length: int = 100_000,
        seed: int = 0,
        split: str = "train",
        pair_fraction: float = 0.6,
    ):
        if split not in SPLITS:
            raise ValueError(f"unknown shapes split {split!r}; valid: {', '.join(SPLITS)}")
        if size < 16 or length < 1 or not 0.0 <= pair_fraction <= 1.0:
            raise ValueError(
                f"need size ≥ 16, length ≥ 1 and pair_fraction in [0, 1], got size={size}, length={length}, "
                f"pair_fraction={pair_fraction}"
            )
        self.size, self.length, self.seed, self.split = size, length, seed, split
        self.pair_fraction = pair_fraction

    def __len__(self) -> int:
        return self.length

    def _generator(self, index: int) -> torch.Generator:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} shapes scenes")
        return item_generator(self.seed, index, SPLITS.index(self.split))

    def scene_and_caption(self, index: int) -> tuple[Scene, str]:
        g = self._generator(index)
        scene = sample_scene(g, self.split, self.pair_fraction)
        return scene, describe(scene, g)

    def scene(self, index: int) -> Scene:
        return self.scene_and_caption(index)[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        scene, caption = self.scene_and_caption(index)
        return render(scene, self.size), caption

    def layout(self, index: int) -> torch.Tensor:
        """Item ``index``'s layout map [3, size, size] in [0, 1] (``layout_map``)."""
        return layout_map(self.scene(index), self.size)

    def cache_params(self) -> dict[str, object]:
        """What decides every item besides the length (``noisecraft.data.cache``); ``version`` counts
        changes of the drawing or caption code that alter items."""
        return {"version": 1, "size": self.size, "seed": self.seed, "split": self.split,
                "pair_fraction": self.pair_fraction}  # fmt: skip

    @property
    def captions(self) -> list[str]:
        """Distinct captions over all items, sorted; computed once (draws every scene, ~0.2 ms per item)."""
        if not hasattr(self, "_captions"):
            self._captions = sorted({self.scene_and_caption(i)[1] for i in range(self.length)})
        return self._captions
