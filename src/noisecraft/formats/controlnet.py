"""Stable Diffusion ControlNet weights → noisecraft's ``ControlNet``: the key maps, as data.

The branch's encoder has the U-Net encoder's names, so ``unet_map``'s block tables serve it unchanged;
this file adds the three parts a ControlNet has besides: the hint encoder, the zero convolutions into
the skips and the one into the middle. Two foreign layouts: diffusers' ``ControlNetModel`` folder
(config.json + diffusion_pytorch_model.safetensors) and the original single file (``control_model.``
names: ``input_hint_block``, ``zero_convs``, ``middle_block_out``; the prefix may be absent).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..nets.control import ControlNet, ControlNetConfig
from ..nets.unet import UNetConfig
from .keys import CheckpointError, TensorMap
from .stable_diffusion import _json, _weights, empty, load_mapped
from .tensor_file import TensorFile
from .unet import unet_config_from_diffusers, unet_map

ORIGINAL_PREFIX = "control_model."
# Hint encoder: our nn.Sequential index ← diffusers name (the original's input_hint_block uses our index).
HINT_FIRST, HINT_LAST = "controlnet_cond_embedding.conv_in", "controlnet_cond_embedding.conv_out"
# Zero convolutions: ours ← diffusers ← original.
ZERO_CONVS = ("zero_convs.{i}", "controlnet_down_blocks.{i}", "zero_convs.{i}.0")
MID_OUT = ("mid_out", "controlnet_mid_block", "middle_block_out.0")


def hint_names(config: ControlNetConfig) -> list[tuple[int, str]]:
    """(index in our hint Sequential, diffusers name) of every hint convolution, in order."""
    pairs = len(config.hint_widths) - 1
    names = [(0, HINT_FIRST)]
    for j in range(pairs):  # conv(a, a) then the widening conv(a, b): diffusers' blocks 2j, 2j + 1
        names += [(2 + 4 * j, f"controlnet_cond_embedding.blocks.{2 * j}")]
        names += [(4 + 4 * j, f"controlnet_cond_embedding.blocks.{2 * j + 1}")]
    return names + [(4 * pairs + 2, HINT_LAST)]


def controlnet_map(config: ControlNetConfig, layout: str) -> TensorMap:
    """Our tensor name → the foreign tensors it is made of; layout: diffusers | original."""
    entries = dict(unet_map(config, layout).entries)  # the encoder: the U-Net's names
    col = 1 if layout == "diffusers" else 2
    skips = 1 + sum(1 for _ in _encoder_outputs(config))
    rows = [(ZERO_CONVS[0].format(i=i), ZERO_CONVS[col].format(i=i)) for i in range(skips)] + [
        (MID_OUT[0], MID_OUT[col])
    ]
    rows += [
        (f"hint.{i}", name if layout == "diffusers" else f"input_hint_block.{i}")
        for i, name in hint_names(config)
    ]
    for ours, theirs in rows:
        for leaf in ("weight", "bias"):
            entries[f"{ours}.{leaf}"] = [f"{theirs}.{leaf}"]
    return TensorMap(entries)


def _encoder_outputs(config: UNetConfig):
    """One item per skip after conv_in's: every encoder block and every downsampler."""
    levels = len(config.channel_mult)
    for level in range(levels):
        yield from range(config.blocks_per_level)
        if level < levels - 1:
            yield "down"


def controlnet_config_from_diffusers(values: dict[str, Any]) -> ControlNetConfig:
    """A diffusers ``ControlNetModel`` config.json as our ControlNetConfig; ValueError naming what we
    cannot run."""
    unsupported = {"controlnet_conditioning_channel_order": "rgb", "global_pool_conditions": False}
    for key, wanted in unsupported.items():
        if values.get(key, wanted) != wanted:
            raise ValueError(f"controlnet config: {key}={values[key]!r} is not supported (only {wanted!r})")
    unet = unet_config_from_diffusers(values)
    widths = tuple(int(w) for w in values.get("conditioning_embedding_out_channels", (16, 32, 96, 256)))
    hint = {
        "hint_channels": int(values.get("conditioning_channels", 3)),
        "hint_widths": widths,
        "hint_stride": 2,
    }
    return ControlNetConfig(**dataclasses.asdict(unet), **hint)


def load_diffusers_controlnet(folder: Path) -> ControlNet:
    """A ``ControlNetModel`` folder (config.json + diffusion_pytorch_model.safetensors) as our branch."""
    try:
        config = controlnet_config_from_diffusers(_json(folder / "config.json"))
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{folder}/config.json: not a ControlNetModel config ({err})") from None
    branch = empty(ControlNet, config)
    return load_mapped(branch, _weights(folder), controlnet_map(config, "diffusers"), "controlnet")


def _hint_from_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """hint_channels and hint_widths read from an original file's input_hint_block shapes."""
    convs = sorted(
        int(k.split(".")[1]) for k in shapes if k.startswith("input_hint_block.") and k.endswith(".weight")
    )
    if len(convs) < 2 or convs != list(range(0, 2 * len(convs), 2)):
        raise CheckpointError("not a ControlNet file: no input_hint_block of convolutions")
    outs = [shapes[f"input_hint_block.{i}.weight"][0] for i in convs]
    widths = (outs[0], *outs[2:-1:2])  # conv_in, then every widening conv; the last is the zero conv
    return {"hint_channels": shapes["input_hint_block.0.weight"][1], "hint_widths": widths, "hint_stride": 2}


def load_single_file_controlnet(path: Path, unet_config: UNetConfig) -> ControlNet:
    """An original-layout ControlNet .safetensors file as a branch for a U-Net of ``unet_config`` (the
    file's encoder must match it: a tensor of another shape is named in the error)."""
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: a ControlNet must be a .safetensors file (pickles are never loaded)")
    with TensorFile(path) as f:
        names = set(f.keys())
        prefix = ORIGINAL_PREFIX if any(n.startswith(ORIGINAL_PREFIX) for n in names) else ""
        ours = {n[len(prefix) :] for n in names if n.startswith(prefix)}
        shapes = {n: tuple(f.shape(prefix + n)) for n in ours}
        unet = {k: v for k, v in dataclasses.asdict(unet_config).items()}
        config = ControlNetConfig(**unet, **_hint_from_shapes(shapes))
        branch = empty(ControlNet, config)
        tensor_map = controlnet_map(config, "original")
        return load_mapped(branch, None, tensor_map, "controlnet", ours, lambda n: f.get_tensor(prefix + n))
