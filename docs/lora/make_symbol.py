"""Render the LoRA demo's training set: 20 captioned 32×32 pictures of a symbol the shipped emoji
model has never seen (a teal badge with a white σ), each drawn a little differently.

    python docs/lora/make_symbol.py outputs/lora-data      # then: noisecraft train emoji32-lora
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"  # Debian's fonts-dejavu-core
CAPTION = "sigma badge"


def badge(rng: random.Random, size: int = 128) -> Image.Image:
    """One picture: the badge at a random scale, tilt, offset and shade of teal, on white."""
    canvas = Image.new("RGB", (size, size), "white")
    side = int(size * rng.uniform(0.62, 0.9))
    tile = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(tile)
    teal = (rng.randint(0, 30), rng.randint(140, 175), rng.randint(140, 170), 255)
    draw.rounded_rectangle((0, 0, side - 1, side - 1), radius=side // 5, fill=teal)
    font = ImageFont.truetype(FONT, int(side * 0.8))
    draw.text((side / 2, side / 2), "σ", font=font, fill="white", anchor="mm")
    tile = tile.rotate(rng.uniform(-15, 15), resample=Image.BICUBIC, expand=True)
    x = (size - tile.width) // 2 + rng.randint(-6, 6)
    y = (size - tile.height) // 2 + rng.randint(-6, 6)
    canvas.paste(tile, (x, y), tile)
    return canvas.resize((32, 32), Image.LANCZOS)


def main(folder: str, count: int = 20, seed: int = 0) -> None:
    out, rng = Path(folder), random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        badge(rng).save(out / f"badge-{i:02d}.png")
        (out / f"badge-{i:02d}.txt").write_text(CAPTION + "\n")
    print(f"{count} images in {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "outputs/lora-data")
