"""Before/after grids of the LoRA demo and a crude measure of what the adapter changed: the share of
"badge teal" pixels (R < 90, G > 110, B > 110, G − R > 60) in each prompt's images, without the adapter
and at scales 0.5 and 1. The training pictures are ≈ 40–60 % such pixels; emoji rarely are.

    python docs/lora/demo_grids.py docs/lora/sigma-badge.safetensors docs/lora
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from noisecraft.images import make_grid, upscale
from noisecraft.pipeline import Pipeline

PROMPTS = ["sigma badge", "red apple", "rocket", "blue heart"]
SEEDS = range(4)


def teal_share(images) -> float:
    """Mean share of badge-teal pixels over ``images``."""
    shares = []
    for image in images:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        shares.append(float(((r < 90) & (g > 110) & (b > 110) & (g - r > 60)).mean()))
    return float(np.mean(shares))


def main(adapter: str, out: str) -> None:
    pipe, folder = Pipeline.load("emoji"), Path(out)
    rows, table = [], ["| prompt | no adapter | scale 0.5 | scale 1 |", "|---|---|---|---|"]
    for prompt in PROMPTS:
        shares = []
        for scale in (0.0, 0.5, 1.0):
            pipe.clear_loras()
            if scale:
                pipe.add_lora(adapter, scale)
            images = [pipe.generate(prompt, seed=s)[0] for s in SEEDS]
            shares.append(teal_share(images))
            print(f"{prompt!r} at scale {scale}: {100 * shares[-1]:.0f} % teal", flush=True)
            if scale != 0.5:
                rows.append((prompt, scale, images))
        table.append(f"| {prompt} | " + " | ".join(f"{100 * s:.0f} %" for s in shares) + " |")
    for scale, name in ((0.0, "before.png"), (1.0, "after.png")):
        tiles = [upscale(im, 2) for prompt, s, images in rows if s == scale for im in images]
        make_grid(tiles, columns=4).save(folder / name)
    print("\n".join(table))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
