"""LoRA adapters on a loaded model: files read once, merged into the weights with their scales.

    adapters = ModelAdapters(net, text_encoder)
    adapters.set([(load_adapter("style.safetensors", …), 0.8)])   # weights = base + 0.8·ΔW

A1111's prompt syntax ``<lora:NAME:SCALE>`` names files in a folder (``--lora-dir``); the tags are
taken out of the prompt before it is encoded. Merging (rather than adding B·A·x at every layer and
step) costs one pass over the touched weights per change of adapters and nothing per step
(benchmarks/lora_speed.py measures both).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..nets.lora import AdapterError, MergedAdapters
from .options import OptionError

LORA_TAG = re.compile(r"<lora:([^<>]*)>")  # A1111's extra-network syntax, lora kind only
ADAPTER_SUFFIX = ".safetensors"


@dataclass
class Adapter:
    """A LoRA file read for one model: what ``MergedAdapters`` adds, and what metadata records."""

    name: str  # the file's stem: what <lora:NAME> and PNG metadata call it
    path: Path
    updates: list  # LoraUpdate
    sha256: str

    @property
    def short_hash(self) -> str:
        """The 12 hex digits A1111's "Lora hashes" field carries."""
        return self.sha256[:12]


class ModelAdapters:
    """The adapters of one model: files read once (by path and modification time) and merged."""

    def __init__(self, net: nn.Module, text_encoder: nn.Module | None):
        from ..formats.lora import module_table  # only the model layer reads formats/

        self.merged = MergedAdapters({"net": net, "text_encoder": text_encoder})
        self.table = module_table(net, text_encoder)
        self._read: dict[tuple[str, float], Adapter] = {}

    def load(self, path: str | os.PathLike) -> Adapter:
        """The adapter in ``path``, checked against this model; AdapterError when it does not fit."""
        from ..formats.lora import read_lora

        path = Path(path).expanduser()
        if not path.is_file():
            raise AdapterError(f"{path}: no such adapter file")
        key = (str(path.resolve()), path.stat().st_mtime)
        if key not in self._read:
            file = read_lora(path, self.table)
            self.merged.check(file.updates)
            self._read[key] = Adapter(path.stem, path, file.updates, file.sha256)
        return self._read[key]

    def set(self, chosen: list[tuple[Adapter, float]]) -> None:
        """Make the weights the base plus each adapter at its scale (an empty list: the base)."""
        self.merged.set([(adapter.updates, scale) for adapter, scale in chosen])

    @property
    def active(self) -> bool:
        """Whether the weights differ from the base now."""
        return bool(self.merged.applied)


def parse_spec(spec: str) -> tuple[str, float]:
    """``FILE[:SCALE]`` (the --lora flag) → (file, scale); a bare file has scale 1."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and _is_number(tail):
        return head, float(tail)
    return spec, 1.0


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def prompt_adapters(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """A prompt without its ``<lora:NAME[:SCALE]>`` tags, and the (name, scale) pairs they hold."""
    found = []
    for body in LORA_TAG.findall(prompt):
        name, _, scale = body.partition(":")
        if not name.strip() or ":" in scale:
            raise OptionError("prompt", f"<lora:{body}>: write <lora:NAME> or <lora:NAME:SCALE>")
        if scale and not _is_number(scale):
            raise OptionError("prompt", f"<lora:{body}>: the scale {scale!r} is not a number")
        found.append((name.strip(), float(scale) if scale else 1.0))
    return " ".join(LORA_TAG.sub(" ", prompt).split()), found


def find_adapter(name: str, folder: str | os.PathLike | None) -> Path:
    """The file ``NAME.safetensors`` in ``folder`` (A1111's lookup by name); OptionError when absent."""
    if folder is None:
        raise OptionError("prompt", f"<lora:{name}> names an adapter, but no LoRA folder is set (--lora-dir)")
    path = Path(folder) / f"{name}{ADAPTER_SUFFIX}"
    if Path(name).name != name or not path.is_file():  # a name, never a path out of the folder
        known = ", ".join(list_adapters(folder)) or "none"
        raise OptionError("prompt", f"no LoRA named {name!r} in {folder} (there: {known})")
    return path


def list_adapters(folder: str | os.PathLike | None) -> list[str]:
    """The adapter names (file stems) in ``folder``, sorted."""
    if folder is None or not Path(folder).is_dir():
        return []
    return sorted(p.stem for p in Path(folder).glob(f"*{ADAPTER_SUFFIX}") if p.is_file())


def save_adapter(
    path: str | os.PathLike, net: nn.Module, style: str = "kohya", record: dict | None = None
) -> Path:
    """The LoRA layers trained on ``net`` (``nets.lora.LoraLayer``), alone, in a .safetensors file with
    kohya or diffusers tensor names following our module names, and ``record`` as JSON metadata."""
    from ..formats.lora import write_lora
    from ..nets.lora import lora_layers

    updates = [layer.update(f"net.{name}.weight") for name, layer in lora_layers(net)]
    if not updates:
        raise AdapterError("the network carries no LoRA layers to save")
    return write_lora(Path(path), updates, style, record)


def adapter_record(own: list[tuple[Adapter, float]], applied: list[tuple[Adapter, float]]) -> dict[str, Any]:
    """PNG metadata of the adapters: those added to the pipeline (by name and scale: the prompt's own
    tags stay in the prompt), and every applied file's short hash, as A1111 records them."""
    record: dict[str, Any] = {}
    if own:
        record["loras"] = [{"name": a.name, "scale": s} for a, s in own]
    if applied:
        record["lora_hashes"] = {a.name: a.short_hash for a, _ in applied}
    return record
