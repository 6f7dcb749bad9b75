"""Which kernel variant is fastest on this CPU for the U-Net's own shapes: the evidence behind nets/ choices.

    .venv/bin/python benchmarks/kernel_layouts.py [--threads 1]

Every case times forward + backward at training batch 32 (the shapes of the peer-sized U-Net of
speed_vs_diffusers.py), all variants of all cases interleaved:

- 3×3 convolution, NCHW vs channels_last (NHWC) activations and weights;
- a token-wise linear layer through MKL's sgemm (F.linear) vs oneDNN's 1×1 convolution on the
  same memory seen as NHWC;
- attention through SDPA's CPU flash kernel vs the math (matmul + softmax) path;
- GroupNorm + SiLU eagerly vs compiled by torch.compile (one fused kernel), in both layouts.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import add_common_arguments, append_results, markdown_table, setup, time_interleaved
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

BATCH = 32
Case = tuple[str, str, Callable[[], None], int]  # (case, variant, forward+backward closure, FLOPs)


def layout(x: Tensor, channels_last: bool) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def conv_cases() -> list[Case]:
    """3×3 convolutions of the U-Net's levels, forward + backward (3× the forward FLOPs)."""
    cases = []
    for c_in, c_out, size in ((64, 64, 32), (128, 128, 16), (256, 256, 8), (384, 128, 16)):
        for channels_last in (False, True):
            x = layout(torch.randn(BATCH, c_in, size, size), channels_last).requires_grad_()
            w = layout(torch.randn(c_out, c_in, 3, 3), channels_last).requires_grad_()
            grad = layout(torch.randn(BATCH, c_out, size, size), channels_last)

            def run(x=x, w=w, grad=grad) -> None:
                F.conv2d(x, w, padding=1).backward(grad)

            flops = 3 * 2 * BATCH * c_in * c_out * 9 * size * size
            cases.append(
                (f"conv3x3 {c_in}→{c_out} @{size}²", "NHWC" if channels_last else "NCHW", run, flops)
            )
    return cases


def linear_cases() -> list[Case]:
    """Token-wise linears [B·N, K] × [K, M] of the transformers, as F.linear and as a 1×1 convolution."""
    cases = []
    for tokens, k, m in ((256, 128, 384), (256, 128, 512), (256, 512, 128), (64, 256, 768), (64, 1024, 256)):
        x = torch.randn(BATCH, tokens, k, requires_grad=True)
        w, b = torch.randn(m, k, requires_grad=True), torch.randn(m, requires_grad=True)
        grad = torch.randn(BATCH, tokens, m)

        def as_linear(x=x, w=w, b=b, grad=grad) -> None:
            F.linear(x, w, b).backward(grad)

        def as_conv(x=x, w=w, b=b, grad=grad) -> None:
            nhwc = x.unsqueeze(2).permute(0, 3, 1, 2)  # [B, K, N, 1] with channels_last strides
            out = F.conv2d(nhwc, w[:, :, None, None], b)  # [B, M, N, 1], channels_last
            out.permute(0, 2, 3, 1).flatten(2).backward(grad)  # [B, N, M]

        flops = 3 * 2 * BATCH * tokens * k * m
        name = f"linear {BATCH * tokens}×{k}×{m}"
        cases += [(name, "F.linear (MKL)", as_linear, flops), (name, "1×1 conv (oneDNN)", as_conv, flops)]
    return cases


def attention_cases() -> list[Case]:
    """Self-attention at 16² and 8², cross-attention to 32 text tokens (30 % padding masked)."""
    cases = []
    generator = torch.Generator().manual_seed(0)
    for heads, queries, keys, masked in ((4, 256, 256, False), (8, 64, 64, False), (4, 256, 32, True)):
        q, k, v = (
            torch.randn(BATCH, n, heads, 32).transpose(1, 2).requires_grad_() for n in (queries, keys, keys)
        )  # [B, h, n, 32] views of [B, n, h, 32], the layout the nets produce
        mask = None
        if masked:
            mask = torch.rand(BATCH, 1, 1, keys, generator=generator) > 0.3
            mask[..., 0] = True
        grad = torch.randn(BATCH, heads, queries, 32)
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):

            def run(q=q, k=k, v=v, mask=mask, grad=grad, backend=backend) -> None:
                with sdpa_kernel(backend):
                    F.scaled_dot_product_attention(q, k, v, attn_mask=mask).backward(grad)

            flops = (
                3 * 4 * BATCH * heads * queries * keys * 32
            )  # backward ≈ 2 forwards, as FlopCounter has it
            name = f"attention {heads} heads, {queries} queries × {keys} keys"
            cases.append((name, backend.name.lower(), run, flops))
    return cases


def norm_silu(x: Tensor, weight: Tensor, bias: Tensor, groups: int) -> Tensor:
    return F.silu(F.group_norm(x, groups, weight, bias, 1e-5))


def norm_cases() -> list[Case]:
    """GroupNorm + SiLU (a residual block's pre-activation), eager vs compiled, NCHW vs NHWC."""
    fused = torch.compile(norm_silu, dynamic=False)
    cases = []
    for channels, size, groups in ((64, 32, 16), (128, 16, 32), (192, 32, 32)):
        for channels_last in (False, True):
            x = layout(torch.randn(BATCH, channels, size, size), channels_last).requires_grad_()
            weight, bias = (
                torch.randn(channels, requires_grad=True),
                torch.randn(channels, requires_grad=True),
            )
            grad = layout(torch.randn(x.shape), channels_last)
            for variant, fn in (("eager", norm_silu), ("compiled", fused)):

                def run(fn=fn, x=x, weight=weight, bias=bias, grad=grad, groups=groups) -> None:
                    fn(x, weight, bias, groups).backward(grad)

                fmt = "NHWC" if channels_last else "NCHW"
                cases.append((f"GroupNorm+SiLU {channels}×{size}²", f"{variant} {fmt}", run, 0))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.set_defaults(repeats=5)
    args = parser.parse_args()
    setup(args)

    cases = conv_cases() + linear_cases() + attention_cases() + norm_cases()
    timings = time_interleaved({f"{c} | {v}": run for c, v, run, _ in cases}, args.repeats, args.warmup)
    best: dict[str, float] = {}
    for case, variant, _, _ in cases:
        best[case] = min(best.get(case, float("inf")), timings[f"{case} | {variant}"].median)
    rows = []
    for case, variant, _, flops in cases:
        t = timings[f"{case} | {variant}"]
        rate = f"{flops / t.median / 1e9:.1f}" if flops else ""
        rows.append([case, variant, f"{t.median * 1e3:.2f}", rate, f"{t.median / best[case]:.2f}"])
    header = ["case (fwd+bwd, batch 32)", "variant", "median ms", "GFLOP/s", "time ÷ best"]
    body = (
        markdown_table(header, rows)
        + f"\n\n{args.repeats} interleaved repeats after {args.warmup} warm-up (compiled variants: the "
        "warm-up compiles)."
    )
    print(body)
    if not args.no_append:
        append_results("Kernel variants at the U-Net's shapes", body, args.note)


if __name__ == "__main__":
    main()
