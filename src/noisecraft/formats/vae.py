"""Stable Diffusion VAE weights → ``nets.autoencoder.AutoencoderKL`` (Rombach et al. 2022).

Two foreign namings hold the same tensors: diffusers' ``AutoencoderKL`` (``vae/`` folder of a
diffusers repository) and the original LDM code's (the ``first_stage_model.`` part of a single-file
Stable Diffusion checkpoint). Each is a list of regex rewrites from *our* names to theirs, applied in
order; the original code numbers the decoder's levels by resolution (``up.0`` is full resolution,
run last) where ours run deepest first, and stores the attention projections as 1×1 convolutions.

Conversion walks our module's state dict, so every tensor we need is looked up once; a foreign
tensor that is missing, left over or of the wrong shape is an error naming it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..nets.autoencoder import AutoencoderConfig, AutoencoderKL

CHECKPOINT_PREFIX = "first_stage_model."  # the VAE's tensors inside a single-file SD checkpoint

DIFFUSERS_RULES: list[tuple[str, str]] = [
    (r"^encoder\.levels\.(\d+)\.blocks\.", r"encoder.down_blocks.\1.resnets."),
    (r"^encoder\.levels\.(\d+)\.resample\.", r"encoder.down_blocks.\1.downsamplers.0.conv."),
    (r"^decoder\.levels\.(\d+)\.blocks\.", r"decoder.up_blocks.\1.resnets."),
    (r"^decoder\.levels\.(\d+)\.resample\.conv\.", r"decoder.up_blocks.\1.upsamplers.0.conv."),
    (r"\.mid\.block1\.", ".mid_block.resnets.0."),
    (r"\.mid\.block2\.", ".mid_block.resnets.1."),
    (r"\.mid\.attn\.norm\.", ".mid_block.attentions.0.group_norm."),
    (r"\.mid\.attn\.(q|k|v)\.", r".mid_block.attentions.0.to_\1."),
    (r"\.mid\.attn\.out\.", ".mid_block.attentions.0.to_out.0."),
    (r"\.skip\.", ".conv_shortcut."),
    (r"\.norm_out\.", ".conv_norm_out."),
]
# diffusers before 0.14 named the attention projections differently; its loader still accepts them
DEPRECATED_DIFFUSERS_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}

ORIGINAL_RULES: list[tuple[str, str]] = [
    (r"^encoder\.levels\.(\d+)\.blocks\.", r"encoder.down.\1.block."),
    (r"^encoder\.levels\.(\d+)\.resample\.", r"encoder.down.\1.downsample.conv."),
    (r"^decoder\.levels\.(\d+)\.blocks\.", r"decoder.up.{\1}.block."),  # {i}: re-indexed below
    (r"^decoder\.levels\.(\d+)\.resample\.", r"decoder.up.{\1}.upsample."),
    (r"\.mid\.block(\d)\.", r".mid.block_\1."),
    (r"\.mid\.attn\.out\.", ".mid.attn_1.proj_out."),
    (r"\.mid\.attn\.", ".mid.attn_1."),
    (r"\.skip\.", ".nin_shortcut."),
]
ATTENTION_WEIGHT = re.compile(r"\.mid\.attn\.(q|k|v|out)\.weight$")  # linear for us, 1×1 conv in LDM


def rename(key: str, rules: list[tuple[str, str]]) -> str:
    """Our state-dict key → the foreign one, by applying every rule in order."""
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def diffusers_name(key: str) -> str:
    """Our key → diffusers' ``AutoencoderKL`` key."""
    return rename(key, DIFFUSERS_RULES)


def original_name(key: str, levels: int) -> str:
    """Our key → the LDM code's key (without ``first_stage_model.``); ``levels`` = len(channels)."""
    name = rename(key, ORIGINAL_RULES)
    return re.sub(r"\{(\d+)\}", lambda m: str(levels - 1 - int(m[1])), name)  # deepest-first → by resolution


def infer_vae_config(
    state_dict: Mapping[str, Tensor], name_of: Callable[[str], str], **settings: Any
) -> AutoencoderConfig:
    """An AutoencoderConfig read from the encoder's tensor shapes; ``settings`` (norm_groups,
    scale_factor) are not in the shapes and default to Stable Diffusion 1/2's."""

    def shape(key: str) -> torch.Size:
        if name_of(key) not in state_dict:
            raise ValueError(f"cannot infer the autoencoder's config: no tensor {name_of(key)!r}")
        return state_dict[name_of(key)].shape

    def count(template: str) -> int:
        n = 0
        while name_of(template.format(n)) in state_dict:
            n += 1
        return n

    levels = count("encoder.levels.{}.blocks.0.conv1.weight")
    if not levels:
        raise ValueError(f"no tensor {name_of('encoder.levels.0.blocks.0.conv1.weight')!r}: not a VAE")
    return AutoencoderConfig(
        in_channels=shape("encoder.conv_in.weight")[1],
        latent_channels=shape("post_quant_conv.weight")[0],
        channels=tuple(shape(f"encoder.levels.{i}.blocks.0.conv1.weight")[0] for i in range(levels)),
        layers_per_block=count("encoder.levels.0.blocks.{}.conv1.weight"),
        **settings,
    )


def convert(
    state_dict: Mapping[str, Tensor], config: AutoencoderConfig, name_of: Callable[[str], str], fmt: str
) -> dict[str, Tensor]:
    """The foreign tensors under our names, each used once; a ValueError lists every misfit."""
    with torch.device("meta"):
        expected = AutoencoderKL(config).state_dict()  # shapes only, no memory
    names = {ours: name_of(ours) for ours in expected}
    if len(set(names.values())) != len(names):
        raise RuntimeError("a key map sends two of our tensors to one foreign name")
    out, problems = {}, []
    for ours, theirs in names.items():
        if theirs not in state_dict:
            problems.append(f"missing {theirs!r}")
            continue
        tensor = state_dict[theirs]
        if fmt == "original" and ATTENTION_WEIGHT.search(ours) and tensor.shape[2:] == (1, 1):
            tensor = tensor[:, :, 0, 0]  # 1×1 convolution [C, C, 1, 1] → linear [C, C]
        if tensor.shape != expected[ours].shape:
            problems.append(
                f"{theirs!r} has shape {tuple(tensor.shape)}, expected {tuple(expected[ours].shape)}"
            )
        out[ours] = tensor
    problems += [f"unused {key!r}" for key in sorted(set(state_dict) - set(names.values()))]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; … {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ValueError(f"{fmt} VAE weights do not fit {config}: {shown}")
    return out


def vae_from_diffusers(
    state_dict: Mapping[str, Tensor], config: AutoencoderConfig | None = None
) -> dict[str, Tensor]:
    """diffusers ``AutoencoderKL`` tensors → our state dict (config inferred from shapes if None)."""
    state_dict = undeprecate_diffusers(state_dict)
    config = config or infer_vae_config(state_dict, diffusers_name)
    return convert(state_dict, config, diffusers_name, "diffusers")


def vae_from_original(
    state_dict: Mapping[str, Tensor], config: AutoencoderConfig | None = None
) -> dict[str, Tensor]:
    """LDM-code VAE tensors (``first_stage_part`` of a checkpoint) → our state dict.

    Without a config it is inferred with SD 1/2's scale factor: pass one for SDXL (0.13025).
    """
    config = config or infer_vae_config(state_dict, lambda key: original_name(key, 0))  # encoder keys only
    return convert(state_dict, config, lambda key: original_name(key, len(config.channels)), "original")


def first_stage_part(checkpoint: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The VAE's tensors of a single-file Stable Diffusion checkpoint, ``first_stage_model.`` removed."""
    part = {k[len(CHECKPOINT_PREFIX) :]: v for k, v in checkpoint.items() if k.startswith(CHECKPOINT_PREFIX)}
    if not part:
        raise ValueError(f"no tensor starts with {CHECKPOINT_PREFIX!r}: not a Stable Diffusion checkpoint")
    return part


def undeprecate_diffusers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename pre-0.14 diffusers attention keys (``query``, ``proj_attn``, …) to today's."""
    old = re.compile(r"(\.mid_block\.attentions\.0\.)(" + "|".join(DEPRECATED_DIFFUSERS_ATTENTION) + r")\.")
    out: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        new = old.sub(lambda m: m[1] + DEPRECATED_DIFFUSERS_ATTENTION[m[2]] + ".", key)
        if new in out:
            raise ValueError(f"diffusers VAE weights hold both {key!r} and its current name {new!r}")
        out[new] = tensor
    return out


# diffusers config values this architecture needs, and diffusers defaults that differ from them
DIFFUSERS_REQUIRED = {
    "act_fn": "silu",
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
    "shift_factor": None,  # (0 is accepted too) LatentSpace only scales
    "latents_mean": None,
    "latents_std": None,
}
DIFFUSERS_DEFAULTS = {
    "down_block_types": ("DownEncoderBlock2D",),
    "up_block_types": ("UpDecoderBlock2D",),
    "out_channels": 3,
}


def vae_config_from_diffusers(config: Mapping[str, Any]) -> AutoencoderConfig:
    """diffusers' ``vae/config.json`` (as a dict) → AutoencoderConfig; other architectures are refused."""
    get = config.get  # absent keys take diffusers' AutoencoderKL defaults
    channels = tuple(get("block_out_channels", (64,)))
    blocks = {
        "down_block_types": ("DownEncoderBlock2D",) * len(channels),
        "up_block_types": ("UpDecoderBlock2D",) * len(channels),
    }
    for key, needed in {**DIFFUSERS_REQUIRED, **blocks, "out_channels": get("in_channels", 3)}.items():
        value = get(key, DIFFUSERS_DEFAULTS.get(key, needed))
        value = tuple(value) if isinstance(value, list) else value
        if value != needed and not (key == "shift_factor" and value == 0):
            raise ValueError(f"diffusers VAE config: {key}={value!r} is not supported (needs {needed!r})")
    return AutoencoderConfig(
        in_channels=get("in_channels", 3),
        latent_channels=get("latent_channels", 4),
        channels=channels,
        layers_per_block=get("layers_per_block", 1),
        norm_groups=get("norm_num_groups", 32),
        scale_factor=get("scaling_factor", 0.18215),
    )
