"""How close a training step of our UNet comes to this CPU's fp32 limit (model FLOPs utilisation, MFU).

    .venv/bin/python benchmarks/mfu.py [--batch 32] [--threads 1] [--compile] [--peer]

The limit is measured in the same run, interleaved with the training steps so all see the same
load: a large square sgemm (torch.mm) and a 3×3 convolution at a size the U-Net really runs
(batch 32, 128 → 128 channels, 16×16, in both memory formats), each looped to last about a second.
The limit is the best of these throughputs: the fastest fp32 multiply-add rate this machine was
seen to sustain in the run.

A step's model FLOPs are 3 × ``UNet.flops_per_image`` × batch: the backward pass costs two
forwards (gradients of inputs and of weights) — FlopCounterMode's count of a real forward+backward
is printed beside it as a check. Norms, activations and the optimizer are not counted (the usual
MFU convention), although the step's time includes them. Ours steps with the AdamW ``noisecraft
train`` builds (fused), the peer with torch's default AdamW, as diffusers' training examples do.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import add_common_arguments, append_results, markdown_table, setup, time_interleaved
from speed_vs_diffusers import DiffusersNet, compiled_for_training, count_flops, make_ours, training_step


def sgemm(size: int):
    """A closure multiplying two size × size fp32 matrices, and its FLOPs."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator) for _ in range(2))
    out = torch.empty(size, size)
    return (lambda: torch.mm(a, b, out=out)), 2 * size**3


def conv3x3(batch: int, channels: int, size: int, channels_last: bool):
    """A closure running a 3×3, stride-1 convolution [B, C, S, S] → [B, C, S, S], and its FLOPs."""
    generator = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, channels, size, size, generator=generator).to(memory_format=fmt)
    w = torch.randn(channels, channels, 3, 3, generator=generator).to(memory_format=fmt)
    return (lambda: F.conv2d(x, w, padding=1)), 2 * batch * channels * channels * 9 * size * size


def repeated(
    kernel: tuple[Callable[[], object], int], seconds: float = 1.0
) -> tuple[Callable[[], None], int]:
    """The kernel looped to last about ``seconds`` (timed once), so its timings are as steady as a step's."""
    fn, flops = kernel
    fn()
    start = time.perf_counter()
    fn()
    loops = max(1, round(seconds / (time.perf_counter() - start)))

    def run() -> None:
        for _ in range(loops):
            fn()

    return run, loops * flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="training batch (default 32)")
    parser.add_argument("--text-len", type=int, default=32, help="prompt length in tokens (padded)")
    parser.add_argument("--gemm-size", type=int, default=2048, help="side of the square sgemm")
    parser.add_argument("--conv", default="32,128,16", help="batch,channels,size of the 3×3 conv")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(ours)")
    parser.add_argument("--peer", action="store_true", help="also time diffusers' UNet2DConditionModel")
    add_common_arguments(parser)
    args = parser.parse_args()
    setup(args)

    conv_batch, conv_channels, conv_size = (int(v) for v in args.conv.split(","))
    kernels = {f"sgemm {args.gemm_size}²": repeated(sgemm(args.gemm_size))}
    for channels_last in (False, True):
        name = f"conv3x3 {args.conv} {'NHWC' if channels_last else 'NCHW'}"
        kernels[name] = repeated(conv3x3(conv_batch, conv_channels, conv_size, channels_last))

    torch.manual_seed(0)
    ours = make_ours()
    step_flops = {"ours": 3 * ours.flops_per_image(args.text_len) * args.batch}
    counted = {"ours": count_flops(ours, args.text_len)[1] * args.batch}
    nets = {"ours": (ours, ours)}
    if args.compile:
        fast, seconds = compiled_for_training(ours, args.batch, args.text_len)
        print(f"torch.compile(ours): first forward+backward took {seconds:.1f} s", flush=True)
        nets["ours+compile"] = (ours, fast)
        step_flops["ours+compile"], counted["ours+compile"] = step_flops["ours"], counted["ours"]
    if args.peer:
        peer = DiffusersNet()
        nets["diffusers"] = (peer, peer)
        counted["diffusers"] = step_flops["diffusers"] = count_flops(peer, args.text_len)[1] * args.batch

    variants = {name: fn for name, (fn, _) in kernels.items()}
    for name, (net, fn) in nets.items():  # ours: the trainer's fused AdamW; the peer: torch's default
        params, library = list(net.parameters()), name != "diffusers"
        variants[f"train step {name}"] = training_step(fn, params, args.batch, args.text_len, library)
    timings = time_interleaved(variants, args.repeats, args.warmup)

    rates = {name: flops / timings[name].median for name, (_, flops) in kernels.items()}
    limit_name = max(rates, key=rates.get)
    limit = rates[limit_name]
    rows = [
        [
            name,
            f"{flops / 1e9:.1f}",
            f"{timings[name].median:.3f}",
            timings[name].spread,
            f"{rates[name] / 1e9:.1f}",
            "",
        ]
        for name, (_, flops) in kernels.items()
    ]
    for name in nets:
        t = timings[f"train step {name}"]
        rate = step_flops[name] / t.median
        rows.append(
            [f"train step {name}, batch {args.batch}", f"{step_flops[name] / 1e9:.1f}", f"{t.median:.3f}",
             t.spread, f"{rate / 1e9:.1f}", f"{rate / limit:.1%}"]
        )  # fmt: skip
    header = ["kernel / job", "GFLOP per call", "median s", "min–max s", "GFLOP/s", "MFU"]
    check = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in counted.items())
    body = (
        markdown_table(header, rows)
        + f"\n\nLimit = best kernel = {limit_name} at {limit / 1e9:.1f} GFLOP/s; MFU = model rate ÷ limit. "
        + f"Step FLOPs = 3 × flops_per_image × batch (FlopCounterMode fwd+bwd count, GFLOP: {check}). "
        + f"{args.repeats} interleaved repeats after {args.warmup} warm-up; text length {args.text_len}."
    )
    print(body)
    if not args.no_append:
        append_results("MFU: UNet training step against measured fp32 limit", body, args.note)


if __name__ == "__main__":
    main()
