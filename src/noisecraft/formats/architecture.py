"""What a single Stable Diffusion file's tensors cannot say, read from ``--config DIR_OR_YAML``.

A single file holds shapes, not head counts, activations or whether a fine-tune predicts ε or v. Two
sources say so, as diffusers' ``from_single_file(config=…)`` and A1111 read them:

- a diffusers folder's configs (``unet/config.json``, ``text_encoder[_2]/config.json``,
  ``scheduler/scheduler_config.json``, ``vae/config.json``); no weights are read from it;
- the original ``.yaml`` (ldm's ``model.params.unet_config``, sgm's ``network_config`` for SDXL):
  ``num_heads`` / ``num_head_channels``, ``parameterization: v``, ``scale_factor``, the text layer.

A ``.yaml`` with the checkpoint's name beside it is read without being asked, as A1111 does. The file
is input: read with ``yaml.safe_load`` (never a constructor that runs code), at most 1 MB.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .keys import CheckpointError

MAX_CONFIG_BYTES = 1 << 20


@dataclass
class ArchitectureHints:
    """A single file's architecture beyond its shapes; None: read from the tensors / the default."""

    prediction: str | None = None  # "epsilon" | "v_prediction"
    unet: dict[str, Any] | None = None  # a diffusers unet/config.json, used whole
    heads: int | None = None  # attention heads per U-Net level (ldm's num_heads)
    head_width: int | None = None  # or the width of each head (ldm's num_head_channels)
    text: list[dict[str, Any]] = field(default_factory=list)  # per text encoder: heads, skip_layers
    scale_factor: float | None = None  # the autoencoder's latent scale
    source: str = ""


def beside(checkpoint: Path) -> Path | None:
    """The ``.yaml`` next to a single file with its name (A1111's convention), if there is one."""
    for suffix in (".yaml", ".yml"):
        if checkpoint.with_suffix(suffix).is_file():
            return checkpoint.with_suffix(suffix)
    return None


def read_hints(path: Path) -> ArchitectureHints:
    """ArchitectureHints from a diffusers folder or an original .yaml; CheckpointError when unusable."""
    if path.is_dir():
        return _from_diffusers_folder(path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return _from_yaml(path)
    raise CheckpointError(f"--config {path}: expected a diffusers model folder or an original .yaml file")


def _read_text(path: Path) -> str:
    if not path.is_file() or path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: not a regular file of at most {MAX_CONFIG_BYTES} bytes")
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not UTF-8 text") from None


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A config file's JSON object (None when the file is absent); CheckpointError when unusable."""
    if not path.exists():
        return None
    try:
        value = json.loads(_read_text(path))
    except (json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def _from_diffusers_folder(folder: Path) -> ArchitectureHints:
    unet = read_json_object(folder / "unet" / "config.json")
    if unet is None:
        raise CheckpointError(f"--config {folder}: no unet/config.json (not a diffusers model folder)")
    scheduler = read_json_object(folder / "scheduler" / "scheduler_config.json") or {}
    vae = read_json_object(folder / "vae" / "config.json") or {}
    texts = [read_json_object(folder / part / "config.json") for part in ("text_encoder", "text_encoder_2")]
    return ArchitectureHints(
        prediction=scheduler.get("prediction_type"),
        unet=unet,
        text=[{"heads": t.get("num_attention_heads")} for t in texts if t is not None],
        scale_factor=vae.get("scaling_factor"),
        source=str(folder),
    )


def _from_yaml(path: Path) -> ArchitectureHints:
    import yaml

    try:
        document = yaml.safe_load(_read_text(path))
    except (yaml.YAMLError, RecursionError) as err:
        raise CheckpointError(f"{path}: not valid YAML ({err})") from None
    params = _get(document, "model", "params")
    if not isinstance(params, dict):
        raise CheckpointError(f"{path}: no model.params: not a Stable Diffusion .yaml")
    network = _get(params, "unet_config", "params") or _get(params, "network_config", "params") or {}
    heads, width = network.get("num_heads", -1), network.get("num_head_channels", -1)
    scaling = str(_get(params, "denoiser_config", "params", "scaling_config", "target") or "")
    v = params.get("parameterization") == "v" or scaling.endswith("VScaling")
    layer = _get(params, "cond_stage_config", "params", "layer")
    layer = {"penultimate": 1, "last": 0}.get(layer) if isinstance(layer, str) else None
    return ArchitectureHints(
        prediction="v_prediction" if v else None,
        heads=_positive(heads, path, "num_heads"),
        head_width=_positive(width, path, "num_head_channels"),
        text=[] if layer is None else [{"skip_layers": layer}],  # SD 1/2's one encoder
        scale_factor=_number(params.get("scale_factor"), path),
        source=str(path),
    )


def _get(value: Any, *keys: str) -> Any:
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _positive(value: Any, path: Path, name: str) -> int | None:
    """A count from the yaml (-1: not set, as ldm writes it); CheckpointError when it is not a count."""
    if value in (None, -1):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 4096:
        raise CheckpointError(f"{path}: {name} must be a positive count, got {value!r}")
    return value


def _number(value: Any, path: Path) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 100:
        raise CheckpointError(f"{path}: scale_factor must be a positive number, got {value!r}")
    return float(value)
