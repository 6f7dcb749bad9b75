"""Speed of our UNet against diffusers' UNet2DConditionModel: one training step, one generation.

    .venv/bin/python benchmarks/speed_vs_diffusers.py [--batch 32] [--threads 1] [--compile]
        [--kernels layout=nchw linear=mkl ...]

The two networks are configured as alike as the architectures allow (the peer of DESIGN.md):
levels of width 64/128/256, 2 residual blocks per level in the encoder and 3 in the decoder,
transformers (self-attention, cross-attention, MLP) at 16×16 and 8×8 and in the middle, head width
32, text width 384, ADM scale-shift conditioning of the residual blocks (diffusers
``resnet_time_scale_shift="scale_shift"``), linear projections into and out of the transformers
(``use_linear_projection=True``). What still differs:

- MLP: diffusers uses GEGLU (dim → 2·4·dim, gate, 4·dim → dim), ours GELU(tanh) (dim → 4·dim → dim):
  the peer does ~6 % more FLOPs per image, so the table also gives time per GFLOP.
- q, k, v: one fused projection with bias in ours; three bias-free ones in diffusers (same FLOPs).
- GroupNorm groups: ours min(32, C/4) (16 at width 64), diffusers 32 everywhere (no FLOPs).
- The pooled prompt: ours adds a projection of it to the noise embedding (one [B, 384] × [384, 256]
  matmul); the peer has no pooled input.
- Empty prompts: ours gives a prompt with no real token zero cross-attention, diffusers a uniform
  one over padding; the prompts here all have ≥ 2 real tokens (like [CLS] [SEP]), so neither path runs.

Training step = forward + mean-squared-error loss + backward + AdamW step on random inputs. Ours
steps with the optimizer ``noisecraft train`` builds (``build_optimizer``: torch's fused AdamW
kernel), the peer with ``torch.optim.AdamW``'s defaults, as diffusers' training examples build it
(on CPU a loop of small ops per parameter); the row "ours, torch AdamW" gives ours the peer's
optimizer too, so the networks alone can be compared.
Generation = 20 steps of dpmpp_2m on a Karras schedule with classifier-free guidance (4 prompts,
each call a batch of 4 conditional + 4 unconditional rows), through the same code for both nets:
EDM preconditioning → ClassifierFreeGuidance → sampler, as ``Pipeline.sample`` runs it; the peer is
wrapped as a ``Net(x_in, c_noise, cond)``, so all that differs between the two is the network.

--kernels adds one variant of ours per choice of CPU kernels (nets/kernels.py, e.g.
``layout=nchw,linear=mkl``), timed interleaved with the table's choice ("ours") and the peer: the
evidence for the table. Every row names the ISA PyTorch ran (AVX2 rows may be emulated on an
AVX-512 CPU: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2).

--compile adds ``torch.compile(ours, dynamic=False)`` for training and the same with freezing
(weights as constants) for generation; in the library, ``net.compile(dynamic=False)`` does this in
place and keeps the state_dict keys (``torch.compile(net)`` prefixes them with ``_orig_mod.``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import Timing, add_common_arguments, append_results, markdown_table, setup, time_interleaved
from diffusers import UNet2DConditionModel
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from noisecraft.conditioning import Conditioning
from noisecraft.denoisers import EDMPrecond
from noisecraft.guidance import ClassifierFreeGuidance
from noisecraft.nets import UNet, UNetConfig
from noisecraft.nets.kernels import cpu_kernels, isa, set_cpu_kernels
from noisecraft.samplers import SAMPLERS
from noisecraft.schedules import karras
from noisecraft.training.build import build_optimizer
from noisecraft.training.config import OptimConfig

IMAGE_SIZE, TEXT_DIM = 32, 384


def make_ours() -> UNet:
    """Our UNet at the peer's size."""
    config = UNetConfig(
        image_size=IMAGE_SIZE,
        in_channels=3,
        channels=64,
        channel_mult=(1, 2, 4),
        blocks_per_level=2,
        attention_resolutions=(16, 8),
        head_dim=32,
        mlp_ratio=4,
        mid_attention=True,
        text_dim=TEXT_DIM,
    )
    return UNet(config)


class DiffusersNet(nn.Module):
    """diffusers' UNet2DConditionModel behind our ``Net(x_in, c_noise, cond) -> raw`` interface."""

    def __init__(self) -> None:
        super().__init__()
        self.unet = UNet2DConditionModel(
            sample_size=IMAGE_SIZE,
            in_channels=3,
            out_channels=3,
            block_out_channels=(64, 128, 256),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=TEXT_DIM,
            attention_head_dim=(2, 4, 8),  # diffusers' "head dim" is the number of heads: 32 wide each
            resnet_time_scale_shift="scale_shift",
            use_linear_projection=True,
        )

    def forward(self, x_in: Tensor, c_noise: Tensor, cond: Conditioning) -> Tensor:
        return self.unet(
            x_in, c_noise, encoder_hidden_states=cond.tokens, encoder_attention_mask=cond.mask
        ).sample


def random_cond(batch: int, text_len: int, generator: torch.Generator, min_tokens: int = 2) -> Conditioning:
    """Prompts of random real lengths in [min_tokens, text_len], padded to text_len."""
    tokens = torch.randn(batch, text_len, TEXT_DIM, generator=generator)
    lengths = torch.randint(min_tokens, text_len + 1, (batch,), generator=generator)
    mask = torch.arange(text_len)[None, :] < lengths[:, None]  # [B, L]
    return Conditioning(tokens, mask, torch.randn(batch, TEXT_DIM, generator=generator))


def flop_counter() -> FlopCounterMode:
    """FlopCounterMode that also counts CPU fused attention, forward and backward (not in torch's table)."""
    aten = torch.ops.aten

    def forward(q, k, v, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(q, k, v)

    def backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out, q, k, v)

    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops(net: nn.Module, text_len: int) -> tuple[int, int]:
    """(forward, forward + backward) FLOPs for one image, counted by FlopCounterMode."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    cond = random_cond(1, text_len, generator)
    with flop_counter() as counter, torch.no_grad():
        net(x, torch.zeros(1), cond)
    forward = counter.get_total_flops()
    with flop_counter() as counter:
        net(x, torch.zeros(1), cond).square().mean().backward()
    net.zero_grad(set_to_none=True)
    return forward, counter.get_total_flops()


class WithKernels(nn.Module):
    """``net`` run under the CPU kernel choice ``spec`` (None: the table's), set before every call."""

    def __init__(self, net: Callable, spec: str | None) -> None:
        super().__init__()
        self.net, self.spec = net, spec

    def forward(self, *args, **kwargs) -> Tensor:
        set_cpu_kernels(self.spec)
        return self.net(*args, **kwargs)


def training_step(
    net: Callable, params: list[nn.Parameter], batch: int, text_len: int, library_optimizer: bool = True
) -> Callable[[], None]:
    """A closure running forward + MSE loss + backward + AdamW step on fixed random data: the
    trainer's AdamW (fused), or torch's default one when ``library_optimizer`` is False."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    target = torch.randn(x.shape, generator=generator)
    c_noise = torch.randn(batch, generator=generator)
    cond = random_cond(batch, text_len, generator)
    if library_optimizer:
        optimizer = build_optimizer(params, OptimConfig(lr=1e-4), torch.device("cpu"))
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.mse_loss(net(x, c_noise, cond), target).backward()
        optimizer.step()

    return step


def generation(net: Callable, prompts: int, steps: int, text_len: int) -> Callable[[], Tensor]:
    """A closure sampling ``prompts`` images: guidance 4, dpmpp_2m, as Pipeline.sample runs it."""
    generator = torch.Generator().manual_seed(2)
    cond = random_cond(prompts, text_len, generator)
    uncond = random_cond(1, text_len, generator, min_tokens=2)
    uncond.mask[:] = torch.arange(text_len) < 2  # the empty prompt: [CLS] [SEP]
    denoiser = ClassifierFreeGuidance(EDMPrecond(net, sigma_data=0.5), 4.0, uncond)
    sigmas = karras(steps, 0.002, 80.0)
    noise = torch.randn(prompts, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)

    @torch.no_grad()
    def sample() -> Tensor:
        return SAMPLERS["dpmpp_2m"](denoiser, noise * sigmas[0], sigmas, cond)

    return sample


def compiled_for_training(net: nn.Module, batch: int, text_len: int) -> tuple[Callable, float]:
    """torch.compile(net) and the seconds its first forward + backward at ``batch`` took (the compile time).

    dynamic=False: kernels specialised to the training shape (a second shape would otherwise switch
    every kernel to symbolic sizes). The module's parameters are shared, so training it trains ``net``.
    """
    fast = torch.compile(net, dynamic=False)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    start = time.perf_counter()
    fast(x, torch.zeros(batch), random_cond(batch, text_len, generator)).square().mean().backward()
    net.zero_grad(set_to_none=True)
    return fast, time.perf_counter() - start


def compiled_for_inference(net: nn.Module, batch: int, text_len: int) -> tuple[Callable, float]:
    """torch.compile(net) with freezing (weights as constants, convolutions pre-packed); its compile time.

    Only for fixed weights, as in a Pipeline: a frozen graph would not see later training updates.
    """
    fast = torch.compile(net, dynamic=False, options={"freezing": True})
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    start = time.perf_counter()
    with torch.no_grad():
        fast(x, torch.zeros(batch), random_cond(batch, text_len, generator))
    return fast, time.perf_counter() - start


def timing_rows(timings: dict[str, Timing], work: dict[str, float], peer: str, job: str) -> list[list]:
    """Table rows: median, spread, GFLOP/s, and the speed-up over the peer in time and in time per FLOP."""
    rows = []
    for name, t in timings.items():
        ratio = timings[peer].median / t.median
        per_flop = ratio * work[name] / work[peer]
        rate = work[name] / t.median / 1e9
        by_min = min(timings[peer].seconds) / min(t.seconds)
        rows.append(
            [job, isa(), name, f"{t.median:.3f}", t.spread, f"{rate:.1f}", f"{ratio:.3f}", f"{by_min:.3f}",
             f"{per_flop:.3f}"]
        )  # fmt: skip
    return rows


def flop_table(nets: dict[str, nn.Module], flops: dict[str, tuple[int, int]]) -> str:
    """Parameters and FLOPs per image of each network."""
    rows = []
    for name, net in nets.items():
        params = sum(p.numel() for p in net.parameters()) / 1e6
        rows.append([name, f"{params:.2f}", f"{flops[name][0] / 1e9:.3f}", f"{flops[name][1] / 1e9:.3f}"])
    return markdown_table(["net", "M params", "GFLOP fwd / image", "GFLOP fwd+bwd / image"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="training batch (default 32)")
    parser.add_argument("--prompts", type=int, default=4, help="images per generation (CFG doubles it)")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps per generation")
    parser.add_argument("--text-len", type=int, default=32, help="prompt length in tokens (padded)")
    parser.add_argument("--gen-repeats", type=int, default=3, help="timed generations per variant")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(ours)")
    parser.add_argument("--no-torch-adamw", action="store_true", help="skip the 'ours, torch AdamW' row")
    parser.add_argument(
        "--kernels", nargs="*", default=[], metavar="SPEC", help="also time ours under these kernel choices"
    )
    parser.add_argument("--compile-peer", action="store_true", help="also time torch.compile(diffusers)")
    add_common_arguments(parser)
    args = parser.parse_args()
    setup(args)

    torch.manual_seed(0)
    nets: dict[str, nn.Module] = {"ours": make_ours(), "diffusers": DiffusersNet()}
    flops = {name: count_flops(net, args.text_len) for name, net in nets.items()}
    compile_names = [n for n, wanted in (("ours", args.compile), ("diffusers", args.compile_peer)) if wanted]
    variants = {name: (net, net) for name, net in nets.items()}  # name -> (owner of the weights, callable)
    variants["ours"] = (nets["ours"], WithKernels(nets["ours"], None))
    for spec in args.kernels:
        variants[f"ours [{spec}]"], flops[f"ours [{spec}]"] = (
            (nets["ours"], WithKernels(nets["ours"], spec)),
            flops["ours"],
        )
    notes = []
    for name in compile_names:
        fast, seconds = compiled_for_training(nets[name], args.batch, args.text_len)
        variants[f"{name}+compile"], flops[f"{name}+compile"] = (nets[name], fast), flops[name]
        notes.append(f"torch.compile({name}) for training: first forward+backward {seconds:.0f} s")
        print(notes[-1], flush=True)

    steps = {
        name: training_step(
            fn, list(net.parameters()), args.batch, args.text_len, not name.startswith("diffusers")
        )
        for name, (net, fn) in variants.items()
    }
    if not args.no_torch_adamw:
        ours = WithKernels(nets["ours"], None)
        params = list(nets["ours"].parameters())
        steps["ours, torch AdamW"] = training_step(ours, params, args.batch, args.text_len, False)
        flops["ours, torch AdamW"] = flops["ours"]
    train = time_interleaved(steps, args.repeats, args.warmup)
    for net in nets.values():
        net.zero_grad(set_to_none=True)
        net.eval()
    for name in compile_names:
        fast, seconds = compiled_for_inference(nets[name], 2 * args.prompts, args.text_len)
        variants[f"{name}+compile"] = (nets[name], fast)
        notes.append(f"torch.compile({name}, freezing) for generation: first forward {seconds:.0f} s")
        print(notes[-1], flush=True)
    gens = {
        name: generation(fn, args.prompts, args.steps, args.text_len) for name, (_, fn) in variants.items()
    }
    gen = time_interleaved(gens, args.gen_repeats, args.warmup)

    set_cpu_kernels(None)
    cpu_kernels_spec = cpu_kernels().spec()
    train_work = {name: args.batch * f[1] for name, f in flops.items()}
    # CFG: each sampler step calls the net once on 2·prompts rows (dpmpp_2m: one call per step)
    gen_work = {name: args.steps * 2 * args.prompts * f[0] for name, f in flops.items()}
    header = [
        "job",
        "ISA",
        "net",
        "median s",
        "min–max s",
        "GFLOP/s",
        "speed-up",
        "by min",
        "speed-up per FLOP",
    ]
    rows = timing_rows(train, train_work, "diffusers", f"train step, batch {args.batch}")
    job = f"{args.steps}-step CFG generation, {args.prompts} images"
    rows += timing_rows(gen, gen_work, "diffusers", job)
    summary = (
        f"{args.repeats} training steps and {args.gen_repeats} generations per variant, interleaved, after "
        f"{args.warmup} warm-up; prompts of {args.text_len} tokens; ours = the table's kernels for "
        f"{isa()} ({cpu_kernels_spec}). speed-up = diffusers' median time ÷ "
        "this one's (> 1: faster than diffusers); by min: the same from the fastest repeats (steadier "
        "when other jobs load the machine); speed-up per FLOP also divides out the difference in "
        "work (FlopCounterMode counts, attention included)."
    )
    if notes:
        summary += " Compile times: " + "; ".join(notes) + "."
    body = f"{flop_table(nets, flops)}\n\n{markdown_table(header, rows)}\n\n{summary}"
    print(body)
    if not args.no_append:
        append_results("Speed against diffusers UNet2DConditionModel", body, args.note)


if __name__ == "__main__":
    main()
