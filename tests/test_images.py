"""images: step-strip labels drawn in a font that has σ (not the missing-glyph box)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from noisecraft.images import label_font, step_strip

MISSING = "\ue000"  # a private-use code point no font here draws: it shows the missing-glyph box


def label_pixels(label: str) -> np.ndarray:
    """The label band of a one-column step strip."""
    strip = step_strip([[Image.new("RGB", (8, 8), "white")]], [label], scale=4)
    return np.asarray(strip)[:14]


def test_sigma_is_drawn_as_sigma_not_as_the_missing_glyph_box() -> None:
    sigma, box = label_pixels("σ"), label_pixels(MISSING)
    assert (sigma < 128).any()  # something is drawn
    assert not np.array_equal(sigma, box)  # and it is not the box every missing glyph gets
    assert not np.array_equal(label_pixels("σ=80"), label_pixels(MISSING + "=80"))


def test_label_font_maps_sigma_to_a_glyph() -> None:
    """The font's own character map has U+03C3 (FreeType's glyph index 0 is the missing glyph)."""
    from fontTools.ttLib import TTFont

    font = TTFont(label_font().path)
    assert 0x03C3 in font.getBestCmap()
