"""OpenCLIP's text tower (SD 2.x single files: ``cond_stage_model.model.``; SDXL's second encoder:
``conditioner.embedders.1.model.``) → transformers' CLIP names.

OpenCLIP stores each layer's q, k and v as one ``in_proj`` matrix [3·D, D]: it is split in three. Its
``text_projection`` [D, P] multiplies from the right, so transformers' Linear weight is its transpose.
Every tensor is used once or named as ignored; a missing or left-over one is an error naming it.
"""

from __future__ import annotations

import re

from torch import Tensor

from .keys import CheckpointError

PREFIX = "cond_stage_model.model."
SDXL_PREFIX = "conditioner.embedders.1.model."
IGNORED = ("logit_scale", "attn_mask")  # CLIP's image-text parts; SD reads neither
LAYER = {  # inside transformer.resblocks.{i}: OpenCLIP → transformers (under encoder.layers.{i})
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}  # fmt: skip


def text_from_open_clip(
    tensors: dict[str, Tensor], prefix: str = PREFIX, projection: bool = False
) -> dict[str, Tensor]:
    """OpenCLIP text-tower tensors (``prefix`` removed) → a transformers ``CLIPTextModel`` state dict, or
    with ``projection`` (SDXL's pooled prompt) a ``CLIPTextModelWithProjection`` one."""
    out: dict[str, Tensor] = {}
    used = (set(IGNORED) | ({"text_projection"} if not projection else set())) & set(tensors)

    def take(theirs: str, ours: str, transpose: bool = False) -> None:
        if theirs not in tensors:
            raise CheckpointError(f"OpenCLIP text encoder: the checkpoint lacks {prefix}{theirs}")
        used.add(theirs)
        out[ours] = tensors[theirs].T.contiguous() if transpose else tensors[theirs]

    take("token_embedding.weight", "text_model.embeddings.token_embedding.weight")
    take("positional_embedding", "text_model.embeddings.position_embedding.weight")
    take("ln_final.weight", "text_model.final_layer_norm.weight")
    take("ln_final.bias", "text_model.final_layer_norm.bias")
    if projection:
        take("text_projection", "text_projection.weight", transpose=True)  # [D, P] → Linear's [P, D]
    layers = {int(m[1]) for k in tensors if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))}
    for i in sorted(layers):
        theirs, ours = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for leaf in ("weight", "bias"):
            for name, target in LAYER.items():
                take(f"{theirs}{name}.{leaf}", f"text_model.{ours}{target}.{leaf}")
            fused = f"{theirs}attn.in_proj_{leaf}"
            if fused not in tensors:
                raise CheckpointError(f"OpenCLIP text encoder: the checkpoint lacks {prefix}{fused}")
            used.add(fused)
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), tensors[fused].chunk(3)):
                out[f"text_model.{ours}self_attn.{part}.{leaf}"] = chunk.clone()
    left = sorted(set(tensors) - used)
    if left:
        raise CheckpointError(f"OpenCLIP text encoder: tensor {prefix}{left[0]} belongs to nothing")
    return out
