"""Stable Diffusion U-Net weights → noisecraft's ``UNet``: the key maps, as data.

Two foreign layouts: diffusers' ``UNet2DConditionModel`` (``down_blocks.0.resnets.1.conv1.weight``)
and the original LDM single file (``model.diffusion_model.input_blocks.2.0.in_layers.2.weight``).
A table of block prefixes, built from the config, pairs each of our blocks with its diffusers and
original names; a table of suffixes per block kind pairs the tensors inside. Attention q/k/v are
fused in our modules (one matmul): the map lists the tensors concatenated into each.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..nets.unet import UNetConfig
from .keys import TensorMap

SDXL_SIZE_FEATURES = 256  # sinusoidal features per size id (diffusers' addition_time_embed_dim)

# Inside a residual block: ours ← diffusers ← original.
RESNET = [
    ("norm1", "norm1", "in_layers.0"),
    ("conv1", "conv1", "in_layers.2"),
    ("emb", "time_emb_proj", "emb_layers.1"),
    ("norm2", "norm2", "out_layers.0"),
    ("conv2", "conv2", "out_layers.3"),
    ("skip", "conv_shortcut", "skip_connection"),  # only where the width changes
]
# Inside one transformer block (diffusers and the original file agree): ours ← theirs, fused in order.
TRANSFORMER_BLOCK = [
    ("norm1", ["norm1"]),
    ("attn.to_qkv", ["attn1.to_q", "attn1.to_k", "attn1.to_v"]),
    ("attn.out", ["attn1.to_out.0"]),
    ("norm2", ["norm2"]),
    ("cross.to_q", ["attn2.to_q"]),
    ("cross.to_kv", ["attn2.to_k", "attn2.to_v"]),
    ("cross.out", ["attn2.to_out.0"]),
    ("norm3", ["norm3"]),
    ("mlp.proj", ["ff.net.0.proj"]),
    ("mlp.out", ["ff.net.2"]),
]
TOP = [  # outside the blocks: ours ← diffusers ← original
    ("embed_mlp.0", "time_embedding.linear_1", "time_embed.0"),
    ("embed_mlp.2", "time_embedding.linear_2", "time_embed.2"),
    ("conv_in", "conv_in", "input_blocks.0.0"),
    ("norm_out", "conv_norm_out", "out.0"),
    ("conv_out", "conv_out", "out.2"),
    ("micro.mlp.0", "add_embedding.linear_1", "label_emb.0.0"),  # SDXL's pooled prompt + size ids
    ("micro.mlp.2", "add_embedding.linear_2", "label_emb.0.2"),
]


def blocks(config: UNetConfig) -> Iterator[tuple[str, str, str, str, int]]:
    """(kind, our prefix, diffusers prefix, original prefix, level) of every block, in order."""
    levels, per = len(config.channel_mult), config.blocks_per_level
    ours, orig = 0, 1  # the original's input_blocks.0 is conv_in
    for level in range(levels):
        theirs = f"down_blocks.{level}"
        for j in range(per):
            block = f"input_blocks.{orig}"
            yield "resnet", f"down.{ours}.res", f"{theirs}.resnets.{j}", f"{block}.0", level
            if config.attends(level):
                yield "transformer", f"down.{ours}.attn", f"{theirs}.attentions.{j}", f"{block}.1", level
            ours, orig = ours + 1, orig + 1
        if level < levels - 1:
            yield "conv", f"down.{ours}", f"{theirs}.downsamplers.0.conv", f"input_blocks.{orig}.0.op", level
            ours, orig = ours + 1, orig + 1
    last, second = levels - 1, 2 if config.mid_attention else 1
    yield "resnet", "mid.0.res", "mid_block.resnets.0", "middle_block.0", last
    if config.mid_attention:
        yield "transformer", "mid.0.attn", "mid_block.attentions.0", "middle_block.1", last
    yield "resnet", "mid.1.res", "mid_block.resnets.1", f"middle_block.{second}", last
    yield from _up_blocks(config)


def _up_blocks(config: UNetConfig) -> Iterator[tuple[str, str, str, str, int]]:
    levels, ours, orig = len(config.channel_mult), 0, 0
    for up, level in enumerate(reversed(range(levels))):
        theirs = f"up_blocks.{up}"
        for j in range(config.blocks_per_level + 1):
            block = f"output_blocks.{orig}"
            yield "resnet", f"up.{ours}.res", f"{theirs}.resnets.{j}", f"{block}.0", level
            if config.attends(level):
                yield "transformer", f"up.{ours}.attn", f"{theirs}.attentions.{j}", f"{block}.1", level
            ours, orig = ours + 1, orig + 1
        if level > 0:  # the upsampler sits in the original's last block of the level
            block = f"output_blocks.{orig - 1}.{2 if config.attends(level) else 1}"
            yield "conv", f"up.{ours}.conv", f"{theirs}.upsamplers.0.conv", f"{block}.conv", level
            ours += 1


def unet_map(config: UNetConfig, layout: str) -> TensorMap:
    """Our tensor name → the foreign tensors (concatenated) it is made of; layout: diffusers | original."""
    theirs = 1 if layout == "diffusers" else 2
    entries: dict[str, list[str]] = {}

    def add(ours: str, foreign: list[str]) -> None:
        for leaf in ("weight", "bias"):
            entries[f"{ours}.{leaf}"] = [f"{name}.{leaf}" for name in foreign]

    for row in TOP:
        add(row[0], [row[theirs]])
    for kind, *prefixes, level in blocks(config):
        ours, foreign = prefixes[0], prefixes[theirs]
        if kind == "conv":
            add(ours, [foreign])
        elif kind == "resnet":
            for row in RESNET:
                add(f"{ours}.{row[0]}", [f"{foreign}.{row[theirs]}"])
        else:
            _add_transformer(add, ours, foreign, config.depth_at(level))
    return TensorMap(entries)


def _add_transformer(add, ours: str, foreign: str, depth: int) -> None:
    for name in ("norm", "proj_in", "proj_out"):
        add(f"{ours}.{name}", [f"{foreign}.{name}"])
    for i in range(depth):
        block = f"{ours}.block" if i == 0 else f"{ours}.more_blocks.{i - 1}"
        for mine, parts in TRANSFORMER_BLOCK:
            add(f"{block}.{mine}", [f"{foreign}.transformer_blocks.{i}.{part}" for part in parts])


def unet_config_from_diffusers(values: dict[str, Any], pixels_per_cell: int = 8) -> UNetConfig:
    """A diffusers ``unet/config.json`` as our UNetConfig; ValueError naming what we cannot run.
    ``pixels_per_cell``: the autoencoder's factor (SDXL's size conditioning counts pixels)."""
    unsupported = {
        "class_embed_type": None, "time_embedding_type": "positional",
        "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu", "resnet_time_scale_shift": "default",
        "dual_cross_attention": False, "only_cross_attention": False, "encoder_hid_dim": None,
    }  # fmt: skip
    for key, wanted in unsupported.items():
        if values.get(key, wanted) != wanted:
            raise ValueError(f"unet config: {key}={values[key]!r} is not supported (only {wanted!r})")
    added = values.get("addition_embed_type")
    if added not in (None, "text_time"):
        raise ValueError(f"unet config: addition_embed_type={added!r} is not supported (only 'text_time')")
    size_embedding = int(values.get("addition_time_embed_dim") or 0) if added else 0
    pooled_dim = int(values.get("projection_class_embeddings_input_dim") or 0) - 6 * size_embedding
    if added and (size_embedding < 1 or pooled_dim < 1):
        raise ValueError("unet config: 'text_time' needs addition_time_embed_dim and its input width")
    down = list(values.get("down_block_types", []))
    widths = list(values["block_out_channels"])
    levels = len(widths)
    if len(down) != levels or any(t not in ("CrossAttnDownBlock2D", "DownBlock2D") for t in down):
        raise ValueError(f"unet config: unsupported down_block_types {down}")
    size = int(values.get("sample_size") or 64)
    attends = tuple(size // 2**level for level, kind in enumerate(down) if kind.startswith("CrossAttn"))
    heads = values.get("num_attention_heads") or values.get("attention_head_dim") or 8
    depth = values.get("transformer_layers_per_block", 1)
    mid = values.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid not in ("UNetMidBlock2DCrossAttn", None):
        raise ValueError(f"unet config: unsupported mid_block_type {mid!r}")
    return UNetConfig(
        image_size=size, in_channels=int(values.get("in_channels", 4)), channels=widths[0],
        channel_mult=tuple(w // widths[0] for w in widths),
        blocks_per_level=int(values.get("layers_per_block", 2)), attention_resolutions=attends,
        mid_attention=mid is not None, text_dim=int(values["cross_attention_dim"]),
        out_channels=int(values.get("out_channels", 4)), num_heads=_per_level(heads, levels),
        transformer_depth=_per_level(depth, levels), embedding_mode="add", feed_forward="geglu",
        qkv_bias=False, norm_groups=int(values.get("norm_num_groups", 32)),
        norm_eps=float(values.get("norm_eps", 1e-5)), transformer_norm_eps=1e-6, pooled_embedding=False,
        size_embedding=size_embedding, pooled_dim=pooled_dim if added else 0, pixels_per_cell=pixels_per_cell,
    )  # fmt: skip


def _per_level(value: int | list[int], levels: int) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, list | tuple) else (int(value),) * levels


def unet_config_from_original(
    shapes: dict[str, tuple[int, ...]],
    heads: int | None = None,
    pixels_per_cell: int = 8,
    pooled: int = 0,
    head_width: int | None = None,
) -> UNetConfig:
    """The UNetConfig of an original-layout U-Net (names without ``model.diffusion_model.``), read from
    its tensor shapes. Head counts are not in the shapes: SD 2's 1,024-wide text means 64-wide heads,
    anything else SD 1's 8 heads per level, unless ``heads`` (per level) or ``head_width`` says.
    SDXL's added embedding takes the ``pooled`` prompt (its width: from the text encoder) and 6 size
    ids of equal width (256 in SDXL)."""
    levels: list[list[int]] = [[]]  # the input blocks of each level; a downsampler starts the next
    n = 1
    while True:
        if f"input_blocks.{n}.0.op.weight" in shapes:
            levels.append([])
        elif f"input_blocks.{n}.0.in_layers.2.weight" in shapes:
            levels[-1].append(n)
        else:
            break
        n += 1
    if not levels[0] or len({len(blocks) for blocks in levels}) != 1:
        raise ValueError("the U-Net's input blocks do not form levels of equal length")
    firsts = [f"input_blocks.{blocks[0]}" for blocks in levels]
    widths = [shapes[f"{first}.0.in_layers.2.weight"][0] for first in firsts]
    attends = [f"{first}.1.proj_in.weight" in shapes for first in firsts]
    context = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight")), 0)
    if not context:
        raise ValueError("no cross-attention in this U-Net: not a text-to-image Stable Diffusion model")
    projection = next(s for k, s in shapes.items() if k.endswith("proj_in.weight"))
    depth = [_depth(shapes, f"{first}.1") or 1 for first in firsts]
    head_count = heads or (0 if context in (1024, 2048) else 8)  # SD 2, SDXL: 64-wide heads
    sdxl = {}
    if "label_emb.0.0.weight" in shapes:  # SDXL: the pooled prompt and 6 size ids
        width = shapes["label_emb.0.0.weight"][1]
        features = (width - pooled) // 6 if pooled else SDXL_SIZE_FEATURES
        sdxl = {"addition_embed_type": "text_time", "addition_time_embed_dim": features,
                "projection_class_embeddings_input_dim": width}  # fmt: skip
    return unet_config_from_diffusers({  # native size: SDXL 1024² (128² latents), SD 1/2 512²
        **sdxl,
        "sample_size": 128 if sdxl else 64, "in_channels": shapes["input_blocks.0.0.weight"][1],
        "out_channels": shapes["out.2.weight"][0], "block_out_channels": widths,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        "layers_per_block": len(levels[0]), "cross_attention_dim": context,
        "use_linear_projection": len(projection) == 2, "transformer_layers_per_block": depth,
        "attention_head_dim": [w // head_width if head_width else head_count or w // 64 for w in widths],
    }, pixels_per_cell)  # fmt: skip


def _depth(shapes: dict[str, tuple[int, ...]], prefix: str) -> int:
    """How many transformer blocks the transformer at ``prefix`` holds (0: none)."""
    depth = 0
    while f"{prefix}.transformer_blocks.{depth}.norm1.weight" in shapes:
        depth += 1
    return depth
