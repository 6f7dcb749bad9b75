"""Layout adherence of a control for the shapes model: on unseen scenes, the share of images whose shapes
sit where the layout map puts them (count, kind, size word, centre within ``tolerance`` of the side),
read back with the shapes oracle.

    python -m noisecraft.evaluation.control --control runs/control_shapes/model --n 100 --steps 20
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from ..data.shapes import Scene, ShapesDataset, layout_caption, layout_map
from ..data.shapes_oracle import read_scene
from ..images import to_pil
from ..model import ControlSpec, SamplingOptions
from ..pipeline import GenerationRequest, Pipeline

EVAL_SEED = 1234  # scenes drawn from another seed than any training run's (0)


def sits_where_mapped(found: Scene, wanted: Scene, tolerance: float = 0.1) -> bool:
    """Same number of shapes and, for some pairing, each of the same kind and size word with its centre
    within ``tolerance`` (a fraction of the side) of the map's."""
    if len(found.shapes) != len(wanted.shapes):
        return False
    for order in itertools.permutations(found.shapes):
        if all(
            f.kind == w.kind and f.size == w.size and max(abs(f.x - w.x), abs(f.y - w.y)) <= tolerance
            for f, w in zip(order, wanted.shapes)
        ):
            return True
    return False


def control_adherence(
    pipe: Pipeline, control: str | None, n: int, steps: int, prompts: str = "layout-free", scale: float = 1.0
) -> dict[str, float]:
    """Share of ``n`` unseen scenes drawn as mapped; ``prompts``: "layout-free" (colours and kinds only)
    or "full" (the dataset's caption, with its position words); ``control`` None: the model's own."""
    ds = ShapesDataset(size=pipe.config.image_size, length=n, seed=EVAL_SEED)
    hits, started = 0, time.time()
    for i in range(n):
        scene, caption = ds.scene_and_caption(i)
        prompt = layout_caption(scene) if prompts == "layout-free" else caption
        image = to_pil(layout_map(scene, ds.size)[None] * 2 - 1)[0]
        spec = ControlSpec(image, "layout", control, scale)
        options = SamplingOptions(steps=steps, seed=EVAL_SEED + i)
        (out,) = pipe.run(GenerationRequest(prompt, options=options, controls=(spec,)))
        hits += sits_where_mapped(read_scene(out), scene)
    return {"share": hits / n, "n": n, "steps": steps, "prompts": prompts, "scale": scale,
            "seconds": round(time.time() - started, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Print (and optionally append) one adherence figure as a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--control", default=None, help="a control folder (default: the model's own)")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompts", choices=("layout-free", "full"), default="layout-free")
    parser.add_argument("--scale", type=float, default=1.0, help="0: the model alone (the baseline)")
    parser.add_argument("--out", default=None, help="append the result as one JSON line to this file")
    args = parser.parse_args(argv)
    pipe = Pipeline.load(args.model)
    result = control_adherence(pipe, args.control, args.n, args.steps, args.prompts, args.scale)
    result["control"] = args.control
    line = json.dumps(result)
    print(line)
    if args.out:
        with Path(args.out).open("a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
