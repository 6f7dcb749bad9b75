"""Candidate CPU speed-ups of our UNet, A/B against the UNet as it is: same weights, same job, interleaved.

    .venv/bin/python benchmarks/unet_variants.py [--batch 32] [--threads 1] [--compile]

Each candidate keeps the weights (state_dict keys and shapes) and the math; it is applied from
outside (a wrapper or a swapped method), so nets/ changes only for what wins here:

- NCHW activations: ``UNet.nhwc_on_cpu = False``, the layout before nets/ ran NHWC on CPU;
- NHWC weights: the convolution weights stored NHWC as well as the activations;
- linears through F.linear: the token-wise linears on MKL's sgemm again, where nets/ now runs them
  as oneDNN 1×1 convolutions on CPU (``layers.TokenLinear``; the previous candidate "linears as 1×1
  convs" lost here on batch-8 forwards because PyTorch sends a 1×1 convolution of a batch under 16
  at one thread to its slow im2col path, which TokenLinear avoids by viewing the rows as 16 images);
- out-of-place residuals: ``x + h`` as before, where nets/ now adds the residual in place into the
  branch's fresh output (``layers.add_residual``; kept: 1–2 % faster here, half the page faults);
- torch.compile (with --compile): ``torch.compile(net, dynamic=False)``.

Jobs: a training step (forward, MSE, backward, AdamW) at --batch, and one no-grad forward of a
CFG generation call (batch 8). The table gives each candidate's median time over the as-is one.
"""

from __future__ import annotations

import argparse
import copy
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import add_common_arguments, append_results, markdown_table, setup, time_interleaved
from speed_vs_diffusers import make_ours, random_cond, training_step
from torch import Tensor, nn

from noisecraft.nets.layers import TokenLinear, TransformerBlock, modulate
from noisecraft.nets.unet import ResBlock


def linear_through_sgemm(self: TokenLinear, x: Tensor) -> Tensor:
    """TokenLinear.forward as before it existed: nn.Linear's F.linear (MKL sgemm on CPU)."""
    return F.linear(x, self.weight, self.bias)


def res_block_out_of_place(self: ResBlock, x: Tensor, emb: Tensor) -> Tensor:
    """ResBlock.forward as of HEAD 8550baf: the residual sum in a fresh tensor."""
    h = self.conv1(F.silu(self.norm1(x)))
    scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
    h = self.conv2(self.dropout(F.silu(modulate(self.norm2(h), shift, scale))))
    return (x if self.skip is None else self.skip(x)) + h


def transformer_block_out_of_place(self: TransformerBlock, x: Tensor, context=None, mask=None) -> Tensor:
    """TransformerBlock.forward as of HEAD 8550baf."""
    x = x + self.attn(self.norm1(x))
    if context is not None:
        x = x + self.cross(self.norm2(x), context, mask)
    return x + self.mlp(self.norm3(x))


def with_methods(net: nn.Module, methods: dict[type, Callable]) -> nn.Module:
    """A deep copy of ``net`` whose modules of the given types use the given forward instead."""
    net = copy.deepcopy(net)
    for module in net.modules():
        for cls, forward in methods.items():
            if isinstance(module, cls):
                module.forward = types.MethodType(forward, module)
    return net


def candidates(base: nn.Module, compile_too: bool) -> dict[str, tuple[nn.Module, nn.Module]]:
    """name -> (owner of the weights, callable), every owner a copy of ``base``."""
    out = {"as is": (base, base)}
    nchw = copy.deepcopy(base)
    nchw.nhwc_on_cpu = False
    out["NCHW activations"] = (nchw, nchw)
    nhwc_weights = copy.deepcopy(base).to(memory_format=torch.channels_last)
    out["NHWC weights"] = (nhwc_weights, nhwc_weights)
    lin = with_methods(base, {TokenLinear: linear_through_sgemm})
    out["linears through F.linear"] = (lin, lin)
    methods = {ResBlock: res_block_out_of_place, TransformerBlock: transformer_block_out_of_place}
    before = with_methods(base, methods)
    out["out-of-place residuals (HEAD 8550baf)"] = (before, before)
    if compile_too:
        compiled = copy.deepcopy(base)
        out["torch.compile"] = (compiled, torch.compile(compiled, dynamic=False))
    return out


def max_difference(variants: dict[str, tuple[nn.Module, nn.Module]], batch: int) -> dict[str, float]:
    """Largest |output − as-is output| of each candidate on one random batch (float32 rounding only)."""
    generator = torch.Generator().manual_seed(0)
    x, c_noise = torch.randn(batch, 3, 32, 32, generator=generator), torch.randn(batch, generator=generator)
    cond = random_cond(batch, 32, generator)
    with torch.no_grad():
        ref = variants["as is"][1](x, c_noise, cond)
        return {name: (fn(x, c_noise, cond) - ref).abs().max().item() for name, (_, fn) in variants.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="training batch (default 32)")
    parser.add_argument("--gen-batch", type=int, default=8, help="rows of one CFG generation call")
    parser.add_argument("--forward-repeats", type=int, default=10, help="timed forwards per variant")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(net)")
    add_common_arguments(parser)
    parser.set_defaults(repeats=4)
    args = parser.parse_args()
    setup(args)

    torch.manual_seed(0)
    base = make_ours()
    with torch.no_grad():  # non-zero output layers, so the differences below mean something
        for p in base.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    variants = candidates(base, args.compile)
    differences = max_difference(variants, 2)

    steps = {
        name: training_step(fn, list(net.parameters()), args.batch, 32)
        for name, (net, fn) in variants.items()
    }
    train = time_interleaved(steps, args.repeats, args.warmup)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(args.gen_batch, 3, 32, 32, generator=generator)
    c_noise, cond = (
        torch.randn(args.gen_batch, generator=generator),
        random_cond(args.gen_batch, 32, generator),
    )

    def forward(fn: nn.Module) -> Callable[[], None]:
        @torch.no_grad()
        def run() -> None:
            fn(x, c_noise, cond)

        return run

    gen = time_interleaved({n: forward(fn) for n, (_, fn) in variants.items()}, args.forward_repeats, 1)
    rows = []
    for name in variants:
        t, g = train[name], gen[name]
        train_ratio, gen_ratio = t.median / train["as is"].median, g.median / gen["as is"].median
        rows.append(
            [name, f"{differences[name]:.1e}", f"{t.median:.3f}", t.spread, f"{train_ratio:.3f}",
             f"{g.median:.3f}", g.spread, f"{gen_ratio:.3f}"]
        )  # fmt: skip
    header = [
        "candidate", "max |Δ out|", f"train step b{args.batch} s", "min–max", "÷ as is",
        f"forward b{args.gen_batch} s", "min–max", "÷ as is",
    ]  # fmt: skip
    body = (
        markdown_table(header, rows)
        + f"\n\n{args.repeats} training steps and {args.forward_repeats} no-grad forwards per candidate, "
        f"interleaved, after {args.warmup} warm-up. ÷ as is < 1: the candidate is faster."
    )
    print(body)
    if not args.no_append:
        append_results("Candidate UNet speed-ups, A/B", body, args.note)


if __name__ == "__main__":
    main()
