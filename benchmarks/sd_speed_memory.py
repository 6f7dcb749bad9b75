"""Stable Diffusion 1.5 at real size on this CPU: ours against diffusers, side by side in one run.

    .venv/bin/python benchmarks/sd_speed_memory.py [--threads 2] [--repeats 3]
    .venv/bin/python benchmarks/sd_speed_memory.py --unet-only [--kernels SPEC ...] [--int8]
        [--deep-cache N ...]

Random weights at SD 1.5's shapes (nothing is downloaded) are written once, as an original-layout
fp16 single file, under outputs/bench/sd15/. Reported, with the machine and its ISA:

- loading that file with ``Pipeline.load`` in a fresh process: seconds and peak RSS, against the
  size of the fp32 weights (target ≤ 1.3×);
- one classifier-free-guided denoising step (batch 2 — the prompt and the empty prompt —, 64×64
  latents = a 512² image, 77 tokens): our ``UNet`` against diffusers' ``UNet2DConditionModel`` holding
  the same weights, interleaved (target ≥ 1.2× faster);
- the VAE decode of one 512² image: ours against diffusers' ``AutoencoderKL`` (target ≥ 1.0×);
- a whole 20-step guided 512² image as a user waits for it: 20 U-Net steps + text + one decode,
  added up from the parts above;
- peak RSS, each in a fresh process (``sd_memory.py``): a 1024² VAE decode whole and in tiles, and a
  whole 512² generation, ours against diffusers' ``StableDiffusionPipeline``.

--unet-only times just the guided U-Net step (no file, no loading, no decode), with one more
variant of ours per ``--kernels`` choice (nets/kernels.py) and, with ``--int8``, ours with int8
linears (nets/quantize.py; its relative error against the fp32 output is reported), and with
``--deep-cache N`` ours reusing deep features (nets/feature_cache.py; the mean step of a cycle of N
calls: one full, N − 1 shallow). Every row names
the ISA PyTorch ran (AVX2 may be emulated: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from common import add_common_arguments, append_results, markdown_table, setup, time_interleaved
from sd_memory import HEADER, in_fresh_process, memory_rows

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "outputs" / "bench" / "sd15"
sys.path.insert(0, str(ROOT / "tests"))  # the single-file writer the tests use


def sd15_unet():
    """diffusers' U-Net at SD 1.5's shapes, random (seeded) weights."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8).eval()


def sd15_parts():
    """diffusers' U-Net, VAE and CLIP text model at SD 1.5's shapes, random (seeded) weights."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = sd15_unet()
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ).eval()  # fmt: skip
    text = CLIPTextModel(
        CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    ).eval()
    return unet, vae, text


def unet_only(args: argparse.Namespace) -> None:
    """The guided U-Net step alone: ours (table's kernels, --kernels variants, --int8) against diffusers."""
    import copy

    from noisecraft.conditioning import Conditioning
    from noisecraft.formats.stable_diffusion import empty, load_mapped
    from noisecraft.formats.unet import unet_config_from_diffusers, unet_map
    from noisecraft.nets import UNet
    from noisecraft.nets.kernels import cpu_kernels, isa, set_cpu_kernels
    from noisecraft.nets.quantize import quantize_int8, relative_error

    theirs = sd15_parts()[0]
    config, state = unet_config_from_diffusers(dict(theirs.config)), theirs.state_dict()
    ours = load_mapped(
        empty(UNet, config), None, unet_map(config, "diffusers"), "unet", set(state), state.get
    )
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 64, 64, generator=g), torch.tensor([500.0, 500.0])
    context = torch.randn(2, 77, 768, generator=g)
    cond = Conditioning(context, torch.ones(2, 77, dtype=torch.bool), torch.zeros(2, 768))

    def under(spec: str | None, net) -> object:
        return lambda: (set_cpu_kernels(spec), net(x, t, cond))[1]

    variants = {"ours": under(None, ours), **{f"ours [{s}]": under(s, ours) for s in args.kernels}}
    # The int8 variant shares every tensor but the linears' with ours (the machine's memory is shared).
    shared = {
        id(p): p for m in ours.modules() if not isinstance(m, torch.nn.Linear) for p in m.parameters(False)
    }
    int8 = quantize_int8(copy.deepcopy(ours, shared)) if args.int8 else None
    if int8 is not None:
        variants["ours int8"] = under(None, int8)
    calls = {name: 1 for name in variants}
    for interval in args.deep_cache:
        variants[f"ours deep_cache={interval}"] = deep_cache_cycle(ours, interval, x, t, cond)
        calls[f"ours deep_cache={interval}"] = interval
    variants["diffusers"] = lambda: theirs(x, t, encoder_hidden_states=context)
    calls["diffusers"] = 1
    with torch.no_grad():
        set_cpu_kernels(None)
        reference = ours(x, t, cond)
        peer = theirs(x, t, encoder_hidden_states=context).sample
        notes = [f"ours vs diffusers: max |Δ| {(reference - peer).abs().max():.1e}"]
        if int8 is not None:
            notes.append(
                f"int8 vs fp32 ours: relative error {relative_error(reference, int8(x, t, cond)):.2e}"
            )
        timing = time_interleaved(variants, args.repeats, args.warmup)
    set_cpu_kernels(None)
    base = timing["diffusers"].median
    fastest = min(timing["diffusers"].seconds)
    rows = [
        [isa(), name, f"{tm.median / calls[name]:.2f}", tm.spread, f"{base * calls[name] / tm.median:.3f}×",
         f"{fastest * calls[name] / min(tm.seconds):.3f}×"]
        for name, tm in timing.items()
    ]  # fmt: skip
    header = [
        "ISA",
        "guided U-Net step, 64×64 latents, batch 2",
        "median s",
        "min–max s",
        "speed-up",
        "by min",
    ]
    table = markdown_table(header, rows)
    cycles = (
        "; deep_cache=N rows: the mean step of a cycle of N calls (1 full, N − 1 on kept features; "
        "min–max is per cycle)"
        if args.deep_cache
        else ""
    )
    body = (
        f"{table}\n\nours = the table's kernels for {isa()} ({cpu_kernels().spec()}){cycles}; "
        + "; ".join(notes)
        + "."
    )
    print(body)
    if not args.no_append:
        append_results(
            "Stable Diffusion 1.5 shapes: the guided U-Net step, ours against diffusers", body, args.note
        )


def write_single_file(unet, vae, text, path: Path) -> Path:
    """The parts in the original single-file layout, fp16 (as most shared SD 1.5 files are)."""
    from sd_helpers import save_single_file

    parts = type("Parts", (), {"unet": unet, "vae": vae, "text_encoder": text})()
    parts.scheduler = type("Scheduler", (), {"alphas_cumprod": torch.zeros(1000)})()
    save_single_file(parts, path, dtype=torch.float16)
    return path


def load_in_fresh_process(path: Path, threads: int) -> dict[str, float]:
    """Seconds and peak RSS (GiB) of ``Pipeline.load(path)`` in a new interpreter."""
    body = (
        "import time\nfrom noisecraft.pipeline import Pipeline\nstart = time.perf_counter()\n"
        f"Pipeline.load({str(path)!r})\n"
        "result = {'seconds': time.perf_counter() - start, 'peak_gib': peak()}\n"
    )
    return in_fresh_process(body, threads)


def deep_cache_cycle(net, interval: int, x, t, cond):
    """One DeepCache cycle on ``net``: a full call and ``interval`` − 1 calls on its kept features."""
    from noisecraft.nets.feature_cache import FeatureCache

    def cycle() -> None:
        net.feature_cache = cache = FeatureCache(interval)
        for _ in range(interval):
            cache.next_call()
            net(x, t, cond)
        net.feature_cache = None

    return cycle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unet-only", action="store_true", help="time the guided U-Net step only")
    parser.add_argument(
        "--kernels", nargs="*", default=[], metavar="SPEC", help="with --unet-only: more variants"
    )
    parser.add_argument("--int8", action="store_true", help="with --unet-only: also ours with int8 linears")
    parser.add_argument(
        "--deep-cache", type=int, nargs="*", default=[], metavar="N",
        help="with --unet-only: also ours with DeepCache at these intervals (mean step of a cycle)",
    )  # fmt: skip
    add_common_arguments(parser)
    args = parser.parse_args()
    setup(args)
    if args.unet_only:
        return unet_only(args)
    CACHE.mkdir(parents=True, exist_ok=True)
    unet, vae, text = sd15_parts()
    fp32_gib = sum(p.numel() for m in (unet, vae, text) for p in m.parameters()) * 4 / 2**30
    single = CACHE / "sd15-random-fp16.safetensors"
    if not single.is_file():
        write_single_file(unet, vae, text, single)
    loading = load_in_fresh_process(single, args.threads)
    peak, seconds = loading["peak_gib"], loading["seconds"]
    print(f"load: {seconds:.1f} s, peak RSS {peak:.2f} GiB, fp32 weights {fp32_gib:.2f} GiB", flush=True)

    from noisecraft.conditioning import Conditioning
    from noisecraft.pipeline import Pipeline

    pipe = Pipeline.load(single)
    unet = unet.half().float()  # the weights ours read from the fp16 file
    vae = vae.half().float()
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 64, 64, generator=g), torch.tensor([500.0, 500.0])
    context = torch.randn(2, 77, 768, generator=g)
    cond = Conditioning(context, torch.ones(2, 77, dtype=torch.bool), torch.zeros(2, 768))
    latent = torch.randn(1, 4, 64, 64, generator=g)
    with torch.no_grad():
        diff = (pipe.net(x, t, cond) - unet(x, t, encoder_hidden_states=context).sample).abs().max().item()
        variants = {"ours": lambda: pipe.net(x, t, cond)}
        variants["diffusers"] = lambda: unet(x, t, encoder_hidden_states=context)
        steps = time_interleaved(variants, args.repeats, args.warmup)
        decodes = time_interleaved(
            {"ours": lambda: pipe.latent.autoencoder.decode(latent), "diffusers": lambda: vae.decode(latent)},
            args.repeats, args.warmup,
        )  # fmt: skip
        start = time.perf_counter()
        pipe.encode(["a lighthouse at dusk, oil painting"])
        text_seconds = time.perf_counter() - start
    rows = []
    for job, timing in (("guided U-Net step, 64×64 latents, batch 2", steps), ("VAE decode, 512²", decodes)):
        ours, theirs = timing["ours"].median, timing["diffusers"].median
        rows.append([job, f"{ours:.2f}", f"{theirs:.2f}", f"{theirs / ours:.3f}×"])
    whole = 20 * steps["ours"].median + decodes["ours"].median + text_seconds
    table = markdown_table(["job", "ours s", "diffusers s", "speed-up"], rows)
    body = (
        f"{table}\n\nU-Net outputs differ by at most {diff:.1e} (same weights). Loading the fp16 single "
        f"file (`Pipeline.load`, fresh process): {seconds:.1f} s, peak RSS {peak:.2f} GiB "
        f"= {peak / fp32_gib:.2f}× the {fp32_gib:.2f} GiB of fp32 weights (target ≤ 1.3×). "
        f"A whole 20-step guided 512² image with ours ≈ {whole:.0f} s (20 steps + text + one decode)."
    )
    memory = markdown_table(HEADER, memory_rows(args.threads))
    body += f"\n\nPeak RSS, each job in a fresh process (`sd_memory.py`):\n\n{memory}"
    print(body)
    if not args.no_append:
        append_results("Stable Diffusion 1.5 shapes: ours against diffusers", body, args.note)


if __name__ == "__main__":
    main()
