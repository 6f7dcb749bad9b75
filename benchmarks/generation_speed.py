"""How long a user waits for images from a shipped model: a default generation of 4 images.

    .venv/bin/python benchmarks/generation_speed.py [--models shapes emoji] [--threads 2]

For each shipped model: ``Pipeline.load(name)`` and ``pipe.generate(prompt, num_images=4)`` with the
model's defaults (20 steps of its sampler, classifier-free guidance, so 20 network calls on a batch
of 8), timed warm (median of --repeats, interleaved across models), plus one cold run of the whole
command a user types, ``noisecraft generate PROMPT --num 4 --model NAME`` in a fresh process
(interpreter start, imports, loading weights and the text encoder, writing the PNGs and the grid).
Target: the warm generation under 5 s on 2 CPU cores.

There is no peer column here: the network is what costs, and it is compared against diffusers'
``UNet2DConditionModel`` in ``speed_vs_diffusers.py``; this script checks the user-facing target.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import add_common_arguments, append_results, markdown_table, setup, time_interleaved

from noisecraft.pipeline import Pipeline, shipped_models

TARGET_SECONDS = 5.0
PROMPTS = {"shapes": "a red circle to the left of a blue square", "emoji": "a watermelon slice"}


def cold_cli_seconds(name: str, prompt: str, threads: int) -> float:
    """Wall time of ``noisecraft generate PROMPT --num 4 --model NAME`` in a new process."""
    cli = Path(sys.executable).with_name("noisecraft")
    with tempfile.TemporaryDirectory() as out:
        command = [str(cli), "generate", prompt, "--num", "4", "--model", name, "--out", out, "--quiet"]
        start = time.perf_counter()
        env = {"OMP_NUM_THREADS": str(threads), "PATH": str(cli.parent)}
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help="shipped model names (default: all)")
    parser.add_argument("--no-cli", action="store_true", help="skip the cold command-line run")
    add_common_arguments(parser)
    parser.set_defaults(threads=2, repeats=5)
    args = parser.parse_args()
    setup(args)
    names = args.models or shipped_models()
    unknown = sorted(set(names) - set(shipped_models()))
    if unknown:
        parser.error(f"not shipped: {', '.join(unknown)}; shipped: {', '.join(shipped_models())}")

    pipes = {name: Pipeline.load(name) for name in names}
    prompts = {name: PROMPTS.get(name, "a picture") for name in names}
    jobs = {name: (lambda n=name: pipes[n].generate(prompts[n], num_images=4)) for name in names}
    with torch.inference_mode():
        warm = time_interleaved(jobs, args.repeats, args.warmup)
    rows = []
    for name in names:
        c = pipes[name].config
        cold = "skipped" if args.no_cli else f"{cold_cli_seconds(name, prompts[name], args.threads):.2f}"
        verdict = "met" if warm[name].median < TARGET_SECONDS else "NOT met"
        rows.append([name, f"{c.steps} × {c.sampler}, guidance {c.guidance:g}", f"{warm[name].median:.3f}",
                     warm[name].spread, cold, verdict])  # fmt: skip
    header = ["model", "settings", "warm median s", "min–max s", "cold CLI s", f"< {TARGET_SECONDS:g} s"]
    body = markdown_table(header, rows) + (
        f"\n\nWarm: `pipe.generate(prompt, num_images=4)` with the model's defaults, {args.repeats} calls "
        f"per model interleaved after {args.warmup} warm-up, {args.threads} threads. Cold: the CLI command "
        "in a fresh process, once (imports and loading included)."
    )
    print(body)
    if not args.no_append:
        append_results("Default generation of 4 images from the shipped models", body, args.note)


if __name__ == "__main__":
    main()
