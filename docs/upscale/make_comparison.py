"""Draw docs/upscale/emoji64.png: `emoji`'s pictures enlarged bilinearly (top row) against `emoji64`'s
(bottom row), the same prompts and seeds, each shown at 2× with nearest-neighbour pixels.

    .venv/bin/python docs/upscale/make_comparison.py
"""

from __future__ import annotations

from pathlib import Path

import torch

from noisecraft.images import to_pil
from noisecraft.model.upscale import enlarge
from noisecraft.pipeline import Pipeline

PROMPTS = ["red apple", "rocket", "grinning face", "owl", "pizza", "sunflower"]


def main() -> None:
    cascade = Pipeline.load("emoji64")
    small = cascade.base.sample(PROMPTS, seed=0)  # [6, 3, 32, 32]
    big = cascade.upscale(PROMPTS, small, seed=0)  # [6, 3, 64, 64]: what generate makes for these seeds
    rows = torch.cat(
        [torch.cat(list(enlarge(small, 2).clamp(-1, 1)), 2), torch.cat(list(big.clamp(-1, 1)), 2)], 1
    )
    image = to_pil(rows[None])[0]
    image = image.resize((image.width * 2, image.height * 2), 0)  # nearest: the pixels as they are
    image.save(Path(__file__).with_name("emoji64.png"))


if __name__ == "__main__":
    main()
