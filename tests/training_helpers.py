"""Shared pieces of the training tests: a tiny toy2d recipe, CLI subprocesses, checkpoint comparison."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from noisecraft.training import TrainConfig, load_config
from noisecraft.training.checkpoint import latest_checkpoint

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "toy2d.toml"

# The shipped toy2d recipe, shrunk: a 2 × 32 MLP on 2048 points, 64 per batch, no previews.
TINY = [
    "model.net.width=32",
    "model.net.depth=2",
    "model.net.input_features=16",
    "data.options.length=2048",
    "optim.batch_size=64",
    "optim.warmup_steps=3",
    "log.every=1",
    "log.progress=false",
    "sampling.every=0",
    "checkpoint.every=1000",
]

# A text-conditioned variant: trains the builtin encoder with caption dropout and 2 micro-batches,
# so an exact resume must also restore the encoder, its EMA and the dropout draws.
TEXT = (
    "text.kind=builtin",
    "text.encoder.dim=16",
    "text.encoder.depth=1",
    "text.encoder.heads=2",
    "text.encoder.max_length=40",
    "text.cond_dropout=0.3",
    "optim.grad_accum=2",
)

# A tiny U-Net for 8 × 8 images (add model.net.in_channels): two levels, attention at 4 × 4.
TINY_UNET = (
    "model.kind=unet",
    "model.net={}",
    "model.net.image_size=8",
    "model.net.channels=8",
    "model.net.channel_mult=[1, 2]",
    "model.net.blocks_per_level=1",
    "model.net.attention_resolutions=[4]",
    "model.net.head_dim=8",
    "model.net.mid_attention=false",
)


def tiny_overrides(*extra: str) -> list[str]:
    return [*TINY, *extra]


def tiny_config(*extra: str) -> TrainConfig:
    return load_config(RECIPE, tiny_overrides(*extra))


def cli(out: Path, *extra: str, steps: int) -> list[str]:
    """The command line of a tiny toy2d run in a fresh interpreter."""
    sets = tiny_overrides(*extra)
    return [
        sys.executable,
        "-m",
        "noisecraft",
        "train",
        str(RECIPE),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--set",
        *sets,
    ]


def popen(args: list[str], **env: str) -> subprocess.Popen:
    """Start a subprocess with stderr piped (stdout discarded) and extra environment variables."""
    return subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
    )


def final_tensors(out: Path) -> dict[str, torch.Tensor]:
    """Model and EMA tensors of the newest checkpoint in a run folder."""
    found = latest_checkpoint(out / "checkpoints")
    assert found is not None, f"no checkpoint in {out}"
    _, tensors, _ = found
    return {k: v for k, v in tensors.items() if k.startswith(("model/", "ema/"))}


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Same keys, bit-identical tensors."""
    assert sorted(a) == sorted(b)
    assert any(k.startswith("ema/") for k in a), "the comparison must cover the EMA"
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"
