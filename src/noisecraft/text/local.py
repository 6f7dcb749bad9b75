"""A CLIP or T5 text encoder loaded by transformers from a folder the user names — never from the hub.

Accepts a folder written by ``save_pretrained`` (config.json + weights + tokenizer files), or the
diffusers layout with the tokenizer in a sibling folder (``tokenizer_path``). The weights stay in
that folder: a saved component records the path only. Weights are read from safetensors only: a
folder with just a pickled ``pytorch_model.bin`` is refused, never unpickled.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from ..components import register_component
from .hf import FrozenHFTextEncoder, missing_files, quiet_loading

KINDS = {"clip_text_model": "clip", "clip": "clip", "t5": "t5"}  # config.json model_type → kind
MODEL_FILES = {
    "config": [["config.json"]],
    "weights": [["model.safetensors"], ["model.safetensors.index.json"]],  # never a pickled .bin
}
TOKENIZER_FILES = {
    "tokenizer": [["tokenizer.json"], ["vocab.json", "merges.txt"], ["spiece.model"]],
}


@dataclass
class LocalTextEncoderConfig:
    path: str  # folder with config.json and the weights
    tokenizer_path: str | None = None  # folder with the tokenizer files; None: the same folder
    max_length: int | None = None  # None: the model's context (CLIP 77, T5 the tokenizer's limit)


def check_folders(model_dir: Path, tokenizer_dir: Path) -> None:
    """Raise ValueError naming every missing file when a folder cannot be loaded."""
    missing = missing_files(model_dir, MODEL_FILES)
    missing += [f"{m} in {tokenizer_dir}" for m in missing_files(tokenizer_dir, TOKENIZER_FILES)]
    if missing:
        raise ValueError(f"text encoder folder {model_dir} is incomplete; missing: {'; '.join(missing)}")


def model_kind(model_dir: Path) -> str:
    """'clip' or 't5', from config.json's model_type."""
    try:
        model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{model_dir / 'config.json'} is not valid JSON ({err})") from None
    if model_type not in KINDS:
        raise ValueError(f"{model_dir}: model_type {model_type!r} is not a CLIP or T5 text model")
    return KINDS[model_type]


def context_length(kind: str, model: Any, tokenizer: Any) -> int:
    """How many tokens the model can read: CLIP's position table; T5's tokenizer limit (else 512)."""
    if kind == "clip":
        return int(model.config.max_position_embeddings)
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit is not None and limit < 1_000_000 else 512


@register_component("local_text")
class LocalTextEncoder(FrozenHFTextEncoder):
    """Frozen CLIP (Radford et al. 2021) or T5 (Raffel et al. 2020) encoder; pooled = CLIP's EOS state
    or T5's mean over real tokens."""

    config_class = LocalTextEncoderConfig

    def __init__(self, config: LocalTextEncoderConfig):
        super().__init__()
        model_dir = Path(config.path).expanduser().resolve()
        tokenizer_dir = Path(config.tokenizer_path or model_dir).expanduser().resolve()
        if not model_dir.is_dir():
            raise ValueError(f"text encoder folder {model_dir} does not exist")
        check_folders(model_dir, tokenizer_dir)
        self.kind = model_kind(model_dir)
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel  # slow import

        model_class = CLIPTextModel if self.kind == "clip" else T5EncoderModel
        with quiet_loading():
            model = model_class.from_pretrained(model_dir, local_files_only=True, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        context = context_length(self.kind, model, tokenizer)
        if config.max_length is not None and not 2 <= config.max_length <= context:
            raise ValueError(f"max_length must be in [2, {context}] for this model, got {config.max_length}")
        # absolute paths, so that a saved component loads from any working directory
        self.config = dataclasses.replace(
            config,
            path=str(model_dir),
            tokenizer_path=None if config.tokenizer_path is None else str(tokenizer_dir),
        )
        self._set_model(model, tokenizer, config.max_length or context)

    def pool(self, hidden: Tensor, mask: Tensor, outputs: Any) -> Tensor:
        if self.kind == "clip":
            return outputs.pooler_output  # [B, D] final state at the EOS token, CLIP's text embedding input
        return super().pool(hidden, mask, outputs)
