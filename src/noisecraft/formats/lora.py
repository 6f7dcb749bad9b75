"""LoRA files people share → low-rank updates of our modules, and our adapters → files others read.

Two naming families, for Stable Diffusion's U-Net and CLIP text encoders and for our own modules:

- kohya (sd-scripts, A1111): ``lora_unet_<module with . → _>.lora_down.weight`` / ``.lora_up.weight``
  / ``.alpha``; text encoders under ``lora_te_`` (SD 1/2) or ``lora_te1_`` / ``lora_te2_`` (SDXL). The
  U-Net's module is named as diffusers names it (``down_blocks_0_attentions_0_…_attn1_to_q``) or as
  the original single file does (``input_blocks_1_1_…``, SDXL's kohya files).
- diffusers / peft: ``unet.<module>.lora_A.weight`` / ``.lora_B.weight`` (older diffusers:
  ``.lora.down.weight``, ``.processor.to_q_lora.down.weight``), ``text_encoder.`` / ``text_encoder_2.``;
  α from the file's ``lora_adapter_metadata`` (``unet.lora_alpha``), else α = r.

Module names come from the U-Net key maps of ``formats.unet`` (one table for weights and adapters):
a foreign ``to_q`` is the first of the three parts fused into our ``to_qkv``. Our own modules'
names serve too (``lora_unet_down_1_attn_block_attn_to_qkv``; ``unet.down.1.attn.block.attn.to_qkv``):
that is how adapters trained on the shipped models are written.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ..nets.lora import AdapterError, LoraUpdate
from ..nets.unet import UNet
from .keys import CheckpointError
from .tensor_file import TensorFile
from .unet import unet_map

# The tensor after the module name → its role.
PARTS = {
    "lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha",  # kohya
    "lora_A.weight": "down", "lora_B.weight": "up",  # peft, diffusers ≥ 0.22
    "lora.down.weight": "down", "lora.up.weight": "up",  # diffusers' LoRACompatible layers
    "lora_linear_layer.down.weight": "down", "lora_linear_layer.up.weight": "up",
}  # fmt: skip
OTHER_KINDS = {  # tensor-name markers of adapters that are not plain LoRA
    "hada_": "LoHa", "lokr_": "LoKr", "dora_scale": "DoRA", "lora_mid": "LoCon with a Tucker core",
    "oft_": "OFT", ".diff": "a full weight difference", "lora_B.bias": "LoRA with biases",
}  # fmt: skip
OLD_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
KOHYA_TEXT = ("lora_te_", "lora_te1_", "lora_te2_")
PEFT_TEXT = ("text_encoder.", "text_encoder_2.")
METADATA_KEY = "noisecraft_adapter"  # our JSON record in the file's __metadata__


@dataclass(frozen=True)
class Target:
    """Where a foreign module's update lands: our parameter and the slice of its rows."""

    parameter: str  # "net.…weight" or "text_encoder.…weight"
    part: tuple[int, int] = (0, 1)


@dataclass
class LoraFile:
    """One adapter file, translated: its updates, its α source and its record."""

    path: Path
    updates: list[LoraUpdate]
    sha256: str  # of the whole file (A1111 shows the first 12 digits)
    record: dict[str, Any] = field(default_factory=dict)  # our JSON metadata, when we wrote it


def _weighted(net: nn.Module) -> list[str]:
    return [n for n, m in net.named_modules() if isinstance(m, nn.Linear | nn.Conv2d) and n]


def module_table(net: nn.Module, text_encoder: nn.Module | None) -> dict[str, Target]:
    """Every module name a LoRA file may use (kohya's and peft's spellings) → its target here."""
    table: dict[str, Target] = {}
    ours = _weighted(net)
    if isinstance(net, UNet):
        have = set(ours)
        for layout in ("diffusers", "original"):
            for key, parts in unet_map(net.config, layout).entries.items():
                mine = key.removesuffix(".weight")
                if not key.endswith(".weight") or mine not in have:
                    continue
                for i, part in enumerate(parts):
                    foreign, target = part.removesuffix(".weight"), Target(f"net.{key}", (i, len(parts)))
                    table[f"lora_unet_{foreign.replace('.', '_')}"] = target
                    table.setdefault(f"unet.{foreign}", target)
    for name in ours:
        table.setdefault(f"lora_unet_{name.replace('.', '_')}", Target(f"net.{name}.weight"))
        table.setdefault(f"unet.{name}", Target(f"net.{name}.weight"))
    encoders = getattr(text_encoder, "encoders", None)
    if isinstance(encoders, nn.ModuleList):  # Stable Diffusion's CLIP towers (transformers modules)
        kohya = KOHYA_TEXT[:1] if len(encoders) == 1 else KOHYA_TEXT[1:]
        for i, encoder in enumerate(encoders):
            for name in _weighted(encoder):  # with or without transformers' "text_model." level
                target = Target(f"text_encoder.encoders.{i}.{name}.weight")
                bare = name.removeprefix("text_model.")
                for spelled in (bare, f"text_model.{bare}"):
                    table[f"{kohya[min(i, len(kohya) - 1)]}{spelled.replace('.', '_')}"] = target
                    table[f"{PEFT_TEXT[min(i, 1)]}{spelled}"] = target
    return table


def split_key(key: str) -> tuple[str, str]:
    """(module, role) of a LoRA tensor name; AdapterError for anything that is not plain LoRA."""
    key = OLD_PROCESSOR.sub(lambda m: f".{m[1]}{'.0' if m[1] == 'to_out' else ''}.lora.{m[2]}.weight", key)
    for suffix, role in sorted(PARTS.items(), key=lambda item: -len(item[0])):
        if key.endswith(f".{suffix}"):
            return key[: -len(suffix) - 1], role
    for marker, kind in OTHER_KINDS.items():
        if marker in key:
            raise AdapterError(f"{key}: a {kind} adapter, not supported (plain LoRA only)")
    raise AdapterError(f"{key}: not a LoRA tensor (expected lora_down/lora_up/alpha or lora_A/lora_B)")


def _peft_alphas(metadata: dict[str, str]) -> dict[str, Any]:
    """peft's adapter settings per root ('unet', 'text_encoder', …) from diffusers' metadata."""
    try:
        values = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    except json.JSONDecodeError:
        raise AdapterError("the file's lora_adapter_metadata is not JSON") from None
    out: dict[str, dict[str, Any]] = {}
    for key, value in values.items() if isinstance(values, dict) else ():
        root, _, name = key.partition(".")
        out.setdefault(root, {})[name] = value
    return out


def _alpha(module: str, tensors: dict[str, Tensor], rank: int, peft: dict[str, Any]) -> float:
    """α of one module: kohya's tensor, else peft's lora_alpha (or a matching alpha_pattern), else r."""
    if "alpha" in tensors:
        return float(tensors["alpha"].float().reshape(-1)[0])
    root, _, name = module.partition(".")
    settings = peft.get(root, {})
    for pattern, alpha in (settings.get("alpha_pattern") or {}).items():
        if name == pattern or name.endswith(f".{pattern}"):
            return float(alpha)
    return float(settings.get("lora_alpha") or rank)


def read_lora(path: Path, table: dict[str, Target]) -> LoraFile:
    """A LoRA .safetensors file as updates of the modules in ``table``; AdapterError naming the first
    tensor that is not plain LoRA, belongs to no module here, or has an impossible shape."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise AdapterError(f"{path}: an adapter must be a .safetensors file (pickles are never loaded)")
    try:
        with TensorFile(path) as f:
            grouped: dict[str, dict[str, Tensor]] = {}
            for key in f.keys():
                module, role = split_key(key)
                grouped.setdefault(module, {})[role] = f.get_tensor(key)
            metadata = f.metadata
    except CheckpointError as err:
        raise AdapterError(str(err)) from None
    if not grouped:
        raise AdapterError(f"{path}: holds no tensors")
    peft = _peft_alphas(metadata)
    updates = [_update(path, module, tensors, table, peft) for module, tensors in sorted(grouped.items())]
    return LoraFile(path, updates, _sha256(path), _record(metadata))


def _update(
    path: Path, module: str, tensors: dict[str, Tensor], table: dict[str, Target], peft: dict[str, Any]
) -> LoraUpdate:
    if "down" not in tensors or "up" not in tensors:
        raise AdapterError(f"{path}: {module} lacks its {'down' if 'down' not in tensors else 'up'} matrix")
    target = table.get(module)
    if target is None:
        raise AdapterError(
            f"{path}: {module} names no layer of this model (an adapter for another architecture?)"
        )
    down, up = tensors["down"], tensors["up"]
    if down.ndim not in (2, 4) or up.ndim != down.ndim or up.shape[1] != down.shape[0]:
        shapes = f"{tuple(down.shape)} and {tuple(up.shape)}"
        raise AdapterError(f"{path}: {module} has matrices of shapes {shapes}")
    alpha = _alpha(module, tensors, down.shape[0], peft)
    return LoraUpdate(target.parameter, down, up, alpha, target.part)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _record(metadata: dict[str, str]) -> dict[str, Any]:
    try:
        record = json.loads(metadata.get(METADATA_KEY, "{}"))
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def write_lora(
    path: Path, updates: list[LoraUpdate], style: str = "kohya", record: dict[str, Any] | None = None
) -> Path:
    """Our modules' updates (targets ``net.<module>.weight``) as a kohya or diffusers-named file, with
    α and our JSON ``record`` in its metadata (kohya's ``ss_network_*``, diffusers' adapter metadata)."""
    if style not in ("kohya", "diffusers"):
        raise ValueError(f"adapter format must be kohya or diffusers, got {style!r}")
    tensors: dict[str, Tensor] = {}
    for u in updates:
        root, _, name = u.target.removesuffix(".weight").partition(".")
        if root != "net":
            raise ValueError(f"{u.target}: only the network's adapters are written")
        if style == "kohya":
            base = f"lora_unet_{name.replace('.', '_')}"
            tensors |= {f"{base}.lora_down.weight": u.down, f"{base}.lora_up.weight": u.up,
                        f"{base}.alpha": torch.tensor(float(u.alpha))}  # fmt: skip
        else:
            tensors |= {f"unet.{name}.lora_A.weight": u.down, f"unet.{name}.lora_B.weight": u.up}
    rank, alpha = (updates[0].rank, updates[0].alpha) if updates else (0, 0.0)
    metadata = {METADATA_KEY: json.dumps(record or {}, sort_keys=True)}
    if style == "kohya":
        metadata |= {"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                     "ss_network_alpha": str(alpha)}  # fmt: skip
    else:
        metadata["lora_adapter_metadata"] = json.dumps({"unet.r": rank, "unet.lora_alpha": alpha})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata)
    return path
