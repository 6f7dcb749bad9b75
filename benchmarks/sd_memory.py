"""Peak memory (RSS) of Stable Diffusion 1.5 at real size on the CPU: each job in a fresh process.

    .venv/bin/python benchmarks/sd_memory.py [--threads 2] [--note "…"]

Random weights at SD 1.5's shapes, fp16 files, cached under outputs/bench/sd15/ (the single file that
``sd_speed_memory.py`` writes, and the same weights as a diffusers folder). Reported:

- VAE decode of one 1024² image (128² latents), whole against in tiles (``--tile``: 512-pixel tiles
  overlapping by 128): the peak RSS of the process and its rise above the loaded model;
- a whole 512² generation (2 guided steps: RSS does not grow with the step count; text, U-Net,
  decode): ours (``Pipeline.load`` + ``generate``) against diffusers' ``StableDiffusionPipeline``
  (``from_pretrained`` of the fp16 diffusers folder, computing in fp32), goal ours ≤ diffusers'.

The peak is the child's high-water RSS (VmHWM), read when its job is done.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from common import add_common_arguments, append_results, markdown_table, setup

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "outputs" / "bench" / "sd15"
SINGLE = CACHE / "sd15-random-fp16.safetensors"
FOLDER = CACHE / "sd15-random-diffusers"
PROMPT = "a lighthouse at dusk, oil painting"
HEADER = ["job", "variant", "peak RSS GiB", "rise over the loaded model GiB"]
# VmHWM, not ru_maxrss: Linux carries the parent's peak RSS across fork + exec into ru_maxrss.
PEAK = (
    "def peak():\n    line = next(x for x in open('/proc/self/status') if x.startswith('VmHWM'))\n"
    "    return int(line.split()[1]) / 2**20\n"
)

DECODE = """
from noisecraft.nets import AutoencoderConfig, AutoencoderKL
from noisecraft.nets.tiles import Tiling
torch.manual_seed(0)
vae = AutoencoderKL(AutoencoderConfig()).eval()  # SD 1.5's shapes, random weights
z = torch.randn(1, 4, 128, 128)  # a 1024² image
before = peak()
with torch.no_grad():
    vae.decode(z, Tiling() if {tile} else None)
result = {{"loaded_gib": before, "peak_gib": peak()}}
"""

OURS = """
from noisecraft.pipeline import Pipeline
pipe = Pipeline.load({path!r})
before = peak()
pipe.generate([{prompt!r}], steps=2, sampler="euler", guidance=7.5, width=512, height=512, seed=0)
result = {{"loaded_gib": before, "peak_gib": peak()}}
"""

DIFFUSERS = """
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained(
    {path!r}, variant="fp16", torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
)
assert pipe.unet.dtype == torch.float32
pipe.set_progress_bar_config(disable=True)
before = peak()
with torch.no_grad():
    pipe([{prompt!r}], num_inference_steps=2, guidance_scale=7.5, height=512, width=512,
         generator=torch.Generator().manual_seed(0))
result = {{"loaded_gib": before, "peak_gib": peak()}}
"""


def in_fresh_process(body: str, threads: int) -> dict[str, float]:
    """The ``result`` dict that ``body`` leaves, run in a new interpreter with ``threads`` threads."""
    code = f"import json, torch\ntorch.set_num_threads({threads})\n{PEAK}{body}\nprint(json.dumps(result))\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_diffusers_folder(folder: Path) -> Path:
    """The single file's weights (the same seeded parts) as an fp16 diffusers folder, with a CLIP
    tokenizer built offline from open_clip's vocabulary."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from sd_speed_memory import sd15_parts

    sys.path.insert(0, str(ROOT / "tests"))
    from test_clip_tokenizer import reference_tokenizer, write_reference_files

    unet, vae, text = sd15_parts()
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    tokenizer = reference_tokenizer(write_reference_files(CACHE / "vocab"))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True, variant="fp16")
    return folder


def memory_rows(threads: int, only: str | None = None) -> list[list[str]]:
    """[job, variant, peak GiB, rise over the loaded model GiB] rows, each measured in a fresh process
    (``only``: "decode" or "generation" rows alone)."""
    if not SINGLE.is_file():
        raise FileNotFoundError(f"{SINGLE}: run benchmarks/sd_speed_memory.py once to write it")
    if not (FOLDER / "model_index.json").is_file():
        write_diffusers_folder(FOLDER)
    jobs = [
        ("VAE decode, 1024²", "ours, whole", DECODE.format(tile=False)),
        ("VAE decode, 1024²", "ours, --tile", DECODE.format(tile=True)),
        ("512² generation, 2 steps", "ours, single file", OURS.format(path=str(SINGLE), prompt=PROMPT)),
        ("512² generation, 2 steps", "ours, diffusers folder", OURS.format(path=str(FOLDER), prompt=PROMPT)),
        ("512² generation, 2 steps", "diffusers", DIFFUSERS.format(path=str(FOLDER), prompt=PROMPT)),
    ]
    rows = []
    for job, variant, body in jobs:
        if only is not None and not job.startswith({"decode": "VAE", "generation": "512"}[only]):
            continue
        r = in_fresh_process(body, threads)
        rows.append([job, variant, f"{r['peak_gib']:.2f}", f"{r['peak_gib'] - r['loaded_gib']:.2f}"])
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--only", choices=("decode", "generation"), help="only these rows")
    args = parser.parse_args()
    setup(args)
    rows = memory_rows(args.threads, args.only)
    table = markdown_table(HEADER, rows)
    body = (
        f"{table}\n\nRandom weights at SD 1.5's shapes (fp16 files, computed in fp32); each row a fresh "
        "process, peak = its VmHWM. The fp32 weights alone are 3.20 GiB (U-Net) + 0.31 (VAE) + 0.46 (text)."
    )
    print(body)
    if not args.no_append:
        append_results("Stable Diffusion 1.5 shapes: peak memory", body, args.note)


if __name__ == "__main__":
    main()
