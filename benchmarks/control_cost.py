"""What a control costs on the CPU: time per denoiser step of the shipped shapes model alone, with one
ControlNet branch, with two, and with one adapter (T2I-Adapter style, nets/control_adapter.py: its
pyramid runs once per map, so a step pays only its 1×1 convolutions), run interleaved; each control's
parameters, FLOPs and size on disk.

    .venv/bin/python benchmarks/control_cost.py [--repeats 20] [--batch 2]

A step is one call of the preconditioned network on ``--batch`` samples (2: one image under
classifier-free guidance) at σ = 1, with a 32-token prompt; the branch is ControlNet.from_unet with
the shapes control recipe's hint encoder (configs/control_shapes.toml).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import add_common_arguments, append_results, markdown_table, setup, time_interleaved

from noisecraft.components import save_component
from noisecraft.conditioning import ControlHint
from noisecraft.nets.control import ControlNet
from noisecraft.nets.control_adapter import ControlAdapter
from noisecraft.pipeline import Pipeline


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=2)
    add_common_arguments(parser)
    args = parser.parse_args()
    setup(args)
    pipe = Pipeline.load("shapes")
    net, denoiser = pipe.net, pipe.denoiser
    branches = [ControlNet.from_unet(net, hint_widths=(16, 32), hint_stride=1).eval() for _ in range(2)]
    adapter = ControlAdapter.from_unet(net, adapter_width=32).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=g)
    cond = pipe.encode(["a red circle and a blue square"] * args.batch)
    hint = torch.rand(1, 3, 32, 32, generator=g)
    sigma = torch.ones(args.batch)

    def step(controls: int):
        c = (
            cond.with_control(tuple(ControlHint(b, hint, 1.0) for b in branches[:controls]))
            if controls
            else cond
        )
        return lambda: denoiser(x, sigma, c)

    adapted = cond.with_control((ControlHint(adapter, hint, 1.0),))
    with torch.no_grad():
        timings = time_interleaved({"base": step(0), "+1 ControlNet": step(1), "+2 ControlNets": step(2),
                                    "+1 adapter": lambda: denoiser(x, sigma, adapted)},
                                   args.repeats, args.warmup)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        save_component(branches[0], Path(tmp) / "fp32")
        save_component(branches[0], Path(tmp) / "fp16", torch.float16)
        save_component(adapter, Path(tmp) / "adapter")
        sizes = {k: (Path(tmp) / k / "model.safetensors").stat().st_size / 2**20 for k in ("fp32", "fp16")}
        sizes["adapter"] = (Path(tmp) / "adapter" / "model.safetensors").stat().st_size / 2**20
    base = timings["base"].median
    rows = [
        [name, f"{t.median * 1e3:.1f}", t.spread, f"{t.median / base:.2f}×"] for name, t in timings.items()
    ]
    flops = branches[0].flops_per_image() / net.flops_per_image()
    body = markdown_table([f"step (batch {args.batch})", "median ms", "spread s", "vs base"], rows)
    body += (
        f"\n\nBranch: {branches[0].num_params() / 1e6:.2f} M parameters "
        f"(base U-Net {net.num_params() / 1e6:.2f} M), "
        f"{flops:.2f}× the base's forward FLOPs per image; on disk {sizes['fp32']:.1f} MiB fp32, "
        f"{sizes['fp16']:.1f} MiB fp16. Adapter: {sum(p.numel() for p in adapter.parameters()) / 1e6:.2f} M "
        f"parameters, {adapter.flops_per_image() / net.flops_per_image():.3f}× the base's forward FLOPs "
        f"per image (its pyramid, once per map), {sizes['adapter']:.1f} MiB fp32."
    )
    print(body)
    if not args.no_append:
        append_results("Control cost per step: shapes model + ControlNet or adapter", body, args.note)


if __name__ == "__main__":
    main()
