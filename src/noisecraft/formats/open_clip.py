"""OpenCLIP's text tower (SD 2.x single files: ``cond_stage_model.model.``) → transformers' CLIP names.

OpenCLIP stores each layer's q, k and v as one ``in_proj`` matrix [3·D, D]: it is split in three.
Every tensor is used once or named as ignored; a missing or left-over one is an error naming it.
"""

from __future__ import annotations

import re

from torch import Tensor

from .keys import CheckpointError

PREFIX = "cond_stage_model.model."
IGNORED = ("text_projection", "logit_scale", "attn_mask")  # CLIP's image-text parts; SD reads neither
LAYER = {  # inside transformer.resblocks.{i}: OpenCLIP → transformers (under encoder.layers.{i})
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}  # fmt: skip


def text_from_open_clip(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """OpenCLIP text-tower tensors (``PREFIX`` removed) → a transformers ``CLIPTextModel`` state dict."""
    out: dict[str, Tensor] = {}
    used = set(IGNORED) & set(tensors)

    def take(theirs: str, ours: str) -> Tensor:
        if theirs not in tensors:
            raise CheckpointError(f"OpenCLIP text encoder: the checkpoint lacks {PREFIX}{theirs}")
        used.add(theirs)
        out[f"text_model.{ours}"] = tensors[theirs]
        return tensors[theirs]

    take("token_embedding.weight", "embeddings.token_embedding.weight")
    take("positional_embedding", "embeddings.position_embedding.weight")
    take("ln_final.weight", "final_layer_norm.weight")
    take("ln_final.bias", "final_layer_norm.bias")
    layers = {int(m[1]) for k in tensors if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))}
    for i in sorted(layers):
        theirs, ours = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for leaf in ("weight", "bias"):
            for name, target in LAYER.items():
                take(f"{theirs}{name}.{leaf}", f"{ours}{target}.{leaf}")
            fused = f"{theirs}attn.in_proj_{leaf}"
            if fused not in tensors:
                raise CheckpointError(f"OpenCLIP text encoder: the checkpoint lacks {PREFIX}{fused}")
            used.add(fused)
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), tensors[fused].chunk(3)):
                out[f"text_model.{ours}self_attn.{part}.{leaf}"] = chunk.clone()
    left = sorted(set(tensors) - used)
    if left:
        raise CheckpointError(f"OpenCLIP text encoder: tensor {PREFIX}{left[0]} belongs to nothing")
    return out
