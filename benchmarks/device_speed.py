"""A 4-image generation on a GPU against the CPU, and each GPU speed option measured on and off.

    python3 benchmarks/device_speed.py --device cuda [--models mnist shapes] [--results FILE]
    .venv/bin/python benchmarks/device_speed.py --device cpu --steps 2 --repeats 1   # a dry run

For each shipped model: ``pipe.generate(prompt, num_images=4)`` with the model's defaults, timed warm
(median of --repeats, variants interleaved) on the CPU (fp32, torch's threads) and on the device with:
fp32 (torch's defaults: cuDNN convolutions in TF32); fp16 and bf16 weights; bf16 autocast over fp32
weights; channels_last; SDPA forced to its flash / memory-efficient / math kernel (bf16: flash takes no
fp32); ``torch.compile`` (bf16, first model only: its compile time, tens of seconds, is the warm-up,
reported apart). A variant that fails (say, a kernel that takes no attention mask) is a row saying so.
Every variant draws the same starting noise; the table gives each one's mean difference from the fp32
device images in 8-bit levels, so a speed-up that changes the pictures shows. On a CPU only the CPU
row is run: the speed options are GPU options, refused there.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import add_common_arguments, append_results, markdown_table, setup, time_interleaved

from noisecraft.devices import Placement, resolve_device
from noisecraft.pipeline import Pipeline, shipped_models

PROMPTS = {"shapes": "a red circle to the left of a blue square", "emoji": "a watermelon slice",
           "mnist": "a handwritten 7"}  # fmt: skip
BF16 = torch.bfloat16
VARIANTS = {  # name → Placement options on the device
    "fp32": {},
    "fp16": {"dtype": torch.float16},
    "bf16": {"dtype": BF16},
    "fp32 + bf16 autocast": {"autocast": BF16},
    "fp32 + channels_last": {"channels_last": True},
    "bf16 + channels_last": {"dtype": BF16, "channels_last": True},
    "bf16 + flash": {"dtype": BF16, "attention": "flash"},
    "bf16 + efficient": {"dtype": BF16, "attention": "efficient"},
    "bf16 + math": {"dtype": BF16, "attention": "math"},
    "bf16 + compile": {"dtype": BF16, "compile": True},
}


def loadable(names: list[str]) -> dict[str, Pipeline]:
    """The shipped models that load here (a missing text-encoder package skips its model)."""
    pipes = {}
    for name in names:
        try:
            pipes[name] = Pipeline.load(name)
        except (ImportError, OSError) as err:
            print(f"skipped {name}: {err}", flush=True)
    return pipes


def images(pipe: Pipeline, prompt: str, steps: int | None) -> np.ndarray:
    """[4, H, W, C] uint8 of one 4-image generation."""
    options = {} if steps is None else {"steps": steps}
    return np.stack([np.asarray(im) for im in pipe.generate(prompt, num_images=4, seed=0, **options)])


def prepare(
    name: str, device: torch.device, args: argparse.Namespace, first: bool
) -> tuple[dict, dict, list]:
    """The variants' pipelines, each run once (compiling happens here): (pipes, warm-up seconds, rows of
    the variants that failed, e.g. a kernel that takes no attention mask)."""
    pipes, warmup, failed = {}, {}, []
    wanted = {} if device.type == "cpu" else {k: v for k, v in VARIANTS.items() if k in args.variants}
    for variant in [] if first else [v for v in wanted if "compile" in v]:
        del wanted[variant]
    for variant, options in wanted.items():
        start = time.perf_counter()
        try:
            pipe = Pipeline.load(name).to(Placement(device, **options))
            images(pipe, PROMPTS.get(name, "a picture"), args.steps)
        except (RuntimeError, ValueError) as err:
            failed.append([name, f"{device.type} {variant}", "failed", str(err).splitlines()[0][:80], "", ""])
            continue
        pipes[variant], warmup[variant] = pipe, time.perf_counter() - start
    return pipes, warmup, failed


def measure(name: str, device: torch.device, args: argparse.Namespace, first: bool) -> list[list[object]]:
    """Rows of (model, variant, seconds, spread, speed-up over the CPU, mean |Δ| levels) for one model."""
    prompt, cpu = PROMPTS.get(name, "a picture"), Pipeline.load(name)
    pipes, warmup, failed = prepare(name, device, args, first)
    run = {"CPU fp32": lambda: images(cpu, prompt, args.steps)}
    run.update({f"{device.type} {v}": (lambda p=p: images(p, prompt, args.steps)) for v, p in pipes.items()})
    reference = run[f"{device.type} fp32" if "fp32" in pipes else "CPU fp32"]()
    cpu_time = time_interleaved({"CPU fp32": run.pop("CPU fp32")}, args.repeats, args.warmup)["CPU fp32"]
    timings = {"CPU fp32": cpu_time, **(time_interleaved(run, args.repeats, warmup=0) if run else {})}
    rows = []
    for (label, timing), pipe in zip(timings.items(), [cpu, *pipes.values()]):
        variant = label.split(" ", 1)[1]
        note = f" (warm-up {warmup[variant]:.1f} s)" if "compile" in variant else ""
        speedup = f"{cpu_time.median / timing.median:.1f}×"
        levels = _levels(images(pipe, prompt, args.steps), reference)
        rows.append([name, label + note, f"{timing.median:.3f}", timing.spread, speedup, levels])
    return rows + failed


def _levels(a: np.ndarray, b: np.ndarray) -> str:
    return f"{np.abs(a.astype(int) - b.astype(int)).mean():.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, mps or cpu (a dry run: the CPU row only)")
    parser.add_argument("--models", nargs="+", default=None, help="shipped models (default: all that load)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: each model's)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="V")
    parser.add_argument("--results", default=None, help="append to this file instead of RESULTS.md")
    add_common_arguments(parser)
    parser.set_defaults(repeats=5, threads=torch.get_num_threads())
    args = parser.parse_args()
    setup(args)
    device = resolve_device(args.device)
    names = list(loadable(args.models or shipped_models()))
    rows = [row for i, name in enumerate(names) for row in measure(name, device, args, first=i == 0)]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    header = ["model", "variant", "s / 4 images", "min–max", "vs CPU", "mean |Δ| levels vs fp32"]
    body = f"Device: {gpu}; CPU threads {torch.get_num_threads()}.\n\n" + markdown_table(header, rows)
    print(body, flush=True)
    if not args.no_append:
        kwargs = {"path": Path(args.results)} if args.results else {}
        title = "Generation on a device: 4 images, speed options on and off"
        append_results(title, body, args.note, **kwargs)


if __name__ == "__main__":
    main()
