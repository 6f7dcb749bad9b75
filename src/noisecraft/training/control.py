"""Train a control branch (ControlNet, Zhang et al. 2023; or with ``kind = "adapter"`` a T2I-Adapter-style
pyramid, Mou et al. 2023) for a frozen model on the shapes dataset, whose every scene comes with its
layout map; only the branch's weights change.

    noisecraft train-control configs/control_shapes.toml --out runs/control_shapes [--resume]

Checkpoints (branch, optimizer, RNG: safetensors + JSON, never pickle) every ``checkpoint_every`` steps;
``--resume`` continues from the newest. The branch is exported to ``<out>/model`` (a component folder
``generate --control-model`` reads) at every checkpoint and at the end.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..components import save_component
from ..conditioning import Conditioning, ControlHint
from ..data.shapes import COLOURS, KINDS, Scene, Shape, ShapesDataset, layout_caption, layout_map, render
from ..losses import denoising_loss
from ..model import load_model
from ..nets.control import ControlNet
from ..nets.control_adapter import ControlAdapter
from ..schedules import edm_lognormal
from ..text import CachedTextEncoder
from .checkpoint import (
    flatten_optimizer,
    latest_checkpoint,
    restore_rng,
    rng_tensors,
    save_checkpoint,
    unflatten_optimizer,
)
from .config import from_dict, tomllib


@dataclass
class ControlTrainConfig:
    base: str = "shapes"  # the frozen model: a shipped name or a saved folder
    steps: int = 2000
    seed: int = 0
    threads: int = 2
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 50
    grad_clip: float = 1.0
    kind: str = "controlnet"  # or "adapter": a T2I-Adapter-style pyramid run once per generation
    hint_widths: tuple[int, ...] = (16, 32)  # controlnet: its hint encoder
    hint_stride: int = 1  # pixel models: the map has the model's resolution
    adapter_width: int = 32  # adapter: channels of its first stage (doubled per resolution)
    adapter_blocks: int = 1  # adapter: residual blocks per stage
    length: int = 100_000  # distinct training scenes
    pair_fraction: float = 0.6
    # P(full caption), P(colours and kinds only), P(empty): the map must carry the layout alone
    caption_mix: tuple[float, float, float] = (0.2, 0.65, 0.15)
    p_mean: float = 0.0  # ln σ ~ N(p_mean, p_std²), with high_fraction of draws at high_sigma
    p_std: float = 1.6
    high_fraction: float = 0.1
    high_sigma: float = 80.0
    checkpoint_every: int = 100
    checkpoint_keep: int = 2
    log_every: int = 20


def read_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ControlTrainConfig:
    """The recipe in a TOML file, with ``overrides`` on top; ValueError naming a bad key."""
    try:
        values = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"{path}: unreadable control recipe ({err})") from None
    return from_dict(ControlTrainConfig, {**values, **(overrides or {})}, "control")


def _batch(ds: ShapesDataset, start: int, n: int, g: torch.Generator, mix: tuple[float, ...]):
    """(images [n, 3, H, W] in [-1, 1], layout maps [n, 3, H, W] in [0, 1], captions) of items start…"""
    images, maps, captions = [], [], []
    for i in range(start, start + n):
        scene, caption = ds.scene_and_caption(i % len(ds))
        images.append(render(scene, ds.size))
        maps.append(layout_map(scene, ds.size))
        u = torch.rand((), generator=g).item()
        captions.append(caption if u < mix[0] else layout_caption(scene) if u < mix[0] + mix[1] else "")
    return torch.stack(images), torch.stack(maps), captions


def layout_captions() -> list[str]:
    """Every caption ``layout_caption`` can write (one or two distinct shapes): encoded once, up front."""
    singles = [Shape(c, k, "small", 0.5, 0.5, 0.1) for c in COLOURS for k in KINDS]
    pairs = [Scene((a, b), "white") for a in singles for b in singles if a != b]
    return ["", *(layout_caption(Scene((s,), "white")) for s in singles), *map(layout_caption, pairs)]


def _edm_sigma(c: ControlTrainConfig, n: int, g: torch.Generator) -> Tensor:
    sigma = edm_lognormal(n, c.p_mean, c.p_std, generator=g)  # [n]
    high = torch.rand(n, generator=g) < c.high_fraction
    return sigma.masked_fill(high, c.high_sigma)


def new_branch(config: ControlTrainConfig, net: nn.Module) -> ControlNet | ControlAdapter:
    """A fresh control of the recipe's kind for ``net``: a ControlNet (its encoder copied) or an adapter."""
    if config.kind == "controlnet":
        return ControlNet.from_unet(net, hint_widths=config.hint_widths, hint_stride=config.hint_stride)
    if config.kind == "adapter":
        return ControlAdapter.from_unet(
            net, adapter_width=config.adapter_width, adapter_blocks=config.adapter_blocks
        )
    raise ValueError(f"control recipe: kind must be 'controlnet' or 'adapter', got {config.kind!r}")


def train_control(config: ControlTrainConfig, out: str | Path, resume: bool = False) -> Path:
    """Train the branch; returns the exported component folder ``<out>/model``."""
    out = Path(out)
    torch.set_num_threads(config.threads)
    parts, _ = load_model(config.base)
    net = parts.net.eval().requires_grad_(False)
    denoiser = parts.settings.denoiser(net)
    text = CachedTextEncoder(parts.text_encoder, layout_captions(), fallback=True)  # full ones on first use
    branch = new_branch(config, net)
    branch.train().requires_grad_(True)
    params = [p for p in branch.parameters()]
    optim = torch.optim.AdamW(params, lr=config.lr, fused=True)
    g = torch.Generator().manual_seed(config.seed)
    step = 0
    found = latest_checkpoint(out / "checkpoints") if resume else None
    if found is not None:
        _, tensors, meta = found
        branch.load_state_dict(
            {k[len("branch/") :]: v for k, v in tensors.items() if k.startswith("branch/")}
        )
        optim.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
        restore_rng(tensors, g)
        step = int(meta["step"])
    ds = ShapesDataset(size=parts.settings.image_size, length=config.length, seed=config.seed,
                       pair_fraction=config.pair_fraction)  # fmt: skip
    sd, started, log = parts.settings.sigma_data, time.time(), out / "log.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    while step < config.steps:
        for group in optim.param_groups:
            group["lr"] = config.lr * min(1.0, (step + 1) / max(1, config.warmup_steps))
        x0, maps, captions = _batch(ds, step * config.batch_size, config.batch_size, g, config.caption_mix)
        cond: Conditioning = text(captions)
        cond = cond.with_control((ControlHint(branch, maps, 1.0),))
        sigma, noise = _edm_sigma(config, len(x0), g), torch.randn(x0.shape, generator=g)
        loss = denoising_loss(denoiser, x0, sigma, noise, cond, weighting="edm", sigma_data=sd).mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        grad = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optim.step()
        step += 1
        if step % config.log_every == 0:
            record = {
                "step": step,
                "loss": loss.item(),
                "grad_norm": grad.item(),
                "seconds": time.time() - started,
            }
            with log.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if step % config.checkpoint_every == 0 or step == config.steps:
            _save(out, step, branch, optim, g, config)
    return out / "model"


def _save(out: Path, step: int, branch: nn.Module, optim, g: torch.Generator, config) -> None:
    tensors, meta = flatten_optimizer(optim)
    tensors |= {f"branch/{k}": v for k, v in branch.state_dict().items()} | rng_tensors(g)
    record = {"optimizer": meta, "config": asdict(config)}
    save_checkpoint(out / "checkpoints", step, tensors, record, config.checkpoint_keep)
    save_component(branch, out / "model")
    (out / "model" / "training.json").write_text(
        json.dumps({"step": step, **record["config"]}, indent=1) + "\n"
    )
