"""Adapter training (LoRA, Hu et al. 2021): wrap a frozen network's layers in trainable low-rank
branches, and export only those branches as a file other tools read."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from ..components import ComponentError, load_component, read_component_config
from ..model.adapters import save_adapter
from ..nets.lora import attach, lora_layers, target_modules
from ..text.vocabulary import unwrap, wrapped_config
from .build import init_folder
from .config import AdapterConfig, from_dict


def attach_adapters(net: nn.Module, adapter: AdapterConfig) -> int:
    """Freeze ``net`` and wrap the layers ``adapter.targets`` names; returns the adapter's parameters."""
    names = target_modules(net, adapter.targets)
    if not names:
        raise ValueError(f"adapter.targets {list(adapter.targets)}: this network has no such layers")
    attach(net, names, adapter.rank, adapter.alpha or float(adapter.rank))
    return sum(p.numel() for _, layer in lora_layers(net) for p in (layer.down.weight, layer.up.weight))


def text_from(text_encoder: nn.Module | None, source: str) -> None:
    """A trainable text encoder takes the base model's weights (``model.init``'s text_encoder/); one
    saved without weights of its own (MiniLM as packaged) leaves a fresh adapter as it is."""
    if text_encoder is None:
        return
    folder = init_folder(source) / "text_encoder"
    if not folder.is_dir():
        return
    saved = unwrap(load_component(folder))  # a vocabulary's encoder trains, not its list of captions
    if not saved.state_dict() and type(saved) is type(text_encoder):
        return
    try:
        text_encoder.load_state_dict(saved.state_dict())
    except RuntimeError as err:
        raise ValueError(f"model.init: {folder} does not fit text.encoder ({err})") from None


def freeze_text_from(text_encoder: nn.Module | None, source: str) -> None:
    """The base model's text encoder, frozen: an adapter is made for the base model as it will run."""
    text_from(text_encoder, source)
    if text_encoder is not None:
        text_encoder.requires_grad_(False)


TEXT_COMPONENTS = {"builtin": "builtin_text", "minilm": "minilm"}  # text.kind → its saved component type


def check_text_as_init(kind: str, encoder: dict[str, Any], source: str) -> None:
    """ValueError unless the recipe's text encoder (``text.kind``, ``text.encoder``) is the one
    ``model.init`` runs with: an adapter is made for the base model as it will run."""
    folder = init_folder(source) / "text_encoder"
    if not folder.is_dir():
        return
    try:
        cls, saved = wrapped_config(*read_component_config(folder))
        ours = from_dict(cls.config_class, encoder, "text.encoder")
    except (ComponentError, ValueError) as err:
        raise ValueError(f"model.init: {err}") from None
    theirs = getattr(cls, "component_type", "?")
    if theirs != TEXT_COMPONENTS.get(kind) or ours != saved:
        raise ValueError(
            f"model.init: {folder} runs a {theirs} text encoder with {dataclasses.asdict(saved)}, but the "
            f"recipe gives text.kind = {kind!r} with {dataclasses.asdict(ours)}: set text.* to match"
        )


def export_adapter(
    net: nn.Module, adapter: AdapterConfig, folder: Path, name: str, record: dict[str, Any]
) -> Path:
    """Write ``folder/NAME.safetensors``: the adapter alone, named as ``adapter.format`` says."""
    return save_adapter(folder / f"{name}.safetensors", net, adapter.format, record)
