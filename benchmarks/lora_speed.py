"""LoRA at sampling time: merged into the weights (what ``Pipeline.add_lora`` does) against computed
on the fly beside each layer (``nets.lora.LoraLayer``, what training runs), on the shipped emoji model.

Times one guided network evaluation (a batch of 2 × --images at 32×32) for the base model, the merged
model and the on-the-fly model, interleaved; and the one-off cost of merging and of restoring.

    .venv/bin/python benchmarks/lora_speed.py --adapter docs/lora/sigma-badge.safetensors
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import torch
from common import add_common_arguments, append_results, markdown_table, setup, time_interleaved

from noisecraft.nets.lora import attach, lora_layers
from noisecraft.pipeline import Pipeline


def on_the_fly(pipe: Pipeline, adapter) -> torch.nn.Module:
    """A copy of the network with each update as a LoraLayer branch (the base weights untouched)."""
    net = copy.deepcopy(pipe.net)
    names = [u.target.removeprefix("net.").removesuffix(".weight") for u in adapter.updates]
    attach(net, names, rank=adapter.updates[0].rank, alpha=adapter.updates[0].alpha)
    by_name = {u.target: u for u in adapter.updates}
    with torch.no_grad():
        for name, layer in lora_layers(net):
            update = by_name[f"net.{name}.weight"]
            layer.down.weight.copy_(update.down.reshape(layer.down.weight.shape))
            layer.up.weight.copy_(update.up.reshape(layer.up.weight.shape))
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapter", default="docs/lora/sigma-badge.safetensors")
    parser.add_argument("--images", type=int, default=4, help="images per evaluation (×2 with guidance)")
    add_common_arguments(parser)
    args = parser.parse_args()
    setup(args)
    pipe = Pipeline.load("emoji")
    x = torch.randn(2 * args.images, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cond = pipe.encode(["sigma badge"] * args.images + [""] * args.images)
    base_net = copy.deepcopy(pipe.net).eval()
    adapter = pipe.adapter_set.load(args.adapter)  # read and checked once; not part of merging
    _ = pipe.weights_hash  # taken before the first merge; not part of merging either
    start = time.perf_counter()
    pipe.add_lora(args.adapter)
    merge = time.perf_counter() - start
    start = time.perf_counter()
    pipe.clear_loras()
    restore = time.perf_counter() - start
    pipe.add_lora(args.adapter)
    fly = on_the_fly(Pipeline.load("emoji"), adapter)
    with torch.no_grad():
        gap = (fly(x, 0.5, cond) - pipe.net(x, 0.5, cond)).abs().max().item()
        nets = {"base": base_net, "merged": pipe.net, "on the fly": fly}
        variants = {name: (lambda net=net: net(x, 0.5, cond)) for name, net in nets.items()}
        timings = time_interleaved(variants, args.repeats, args.warmup)
    base = timings["base"].median
    rows = [[n, f"{t.median * 1e3:.1f}", f"{t.median / base:.2f}×", t.spread] for n, t in timings.items()]
    table = markdown_table(["network", "ms per evaluation", "vs base", "spread s"], rows)
    size = os.path.getsize(args.adapter)
    params = sum(u.down.numel() + u.up.numel() for u in adapter.updates)
    base_params = sum(p.numel() for p in base_net.parameters())
    body = (
        f"{table}\n\nAdapter: {len(adapter.updates)} layers, rank {adapter.updates[0].rank}, "
        f"{params:,} parameters ({100 * params / base_params:.1f} % of the U-Net's {base_params:,}), "
        f"{size / 1024:.0f} KiB on disk. "
        f"Merging took {merge * 1e3:.1f} ms (the file read beforehand), restoring {restore * 1e3:.1f} ms; "
        f"merged vs on-the-fly outputs differ by at most {gap:.1e}."
    )
    print(body)
    if not args.no_append:
        append_results("LoRA at sampling time: merged vs on the fly (emoji model)", body, args.note)


if __name__ == "__main__":
    main()
