"""Controls of a request: which branch (a saved ControlNet, a diffusers ``ControlNetModel`` folder or a
single ControlNet file), which map, how strongly and over which part of the steps."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch import Tensor, nn

from ..components import ComponentError, load_component
from ..control_maps import CONTROL_TYPES, ControlMapError, make_map, read_map
from ..guidance import Control
from ..nets.control import ControlNet
from ..nets.control_adapter import ControlAdapter
from .options import OptionError

DEFAULT_CONTROL = "control"  # a model folder's own control branch lives in this sub-folder
# What a client or an A1111 infotext may call the model's own branch (A1111 writes "None" for no model).
OWN_CONTROL_NAMES = ("", "none", "control", "default")


@dataclass(frozen=True)
class ControlSpec:
    """One control as a user gives it: a map (image, file or bytes), its type (control_maps.CONTROL_TYPES),
    the branch (None: the model's own ``control/``), a scale and a window (fractions of the steps)."""

    image: Image.Image | str | bytes
    kind: str = "layout"
    model: str | None = None
    scale: float = 1.0
    window: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.kind not in CONTROL_TYPES:
            raise OptionError(
                "control_type", f"unknown control type {self.kind!r}; valid: {', '.join(CONTROL_TYPES)}"
            )
        try:
            scale, window = float(self.scale), tuple(float(w) for w in self.window)
        except (TypeError, ValueError):
            raise OptionError("control_scale", "a control's scale and window must be numbers") from None
        if not (abs(scale) < float("inf")) or len(window) != 2 or not 0.0 <= window[0] <= window[1] <= 1.0:
            raise OptionError(
                "control_window", f"need a finite scale and 0 <= start <= end <= 1, got {scale}, {window}"
            )
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "window", window)

    def metadata(self) -> dict[str, Any]:
        """What a PNG records of this control (the map's file is added by whoever read it)."""
        return {"type": self.kind, "model": self.model, "scale": self.scale, "window": list(self.window)}


def load_control_branch(source: str | os.PathLike, net: nn.Module) -> ControlNet | ControlAdapter:
    """A branch for ``net``: a noisecraft ControlNet folder, a diffusers ``ControlNetModel`` folder or a
    single ControlNet .safetensors file; ValueError (one line) when it is none, or is for another network."""
    path = Path(source)
    if path.is_dir() and (path / "config.json").is_file():
        try:
            record = json.loads((path / "config.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"control model {path}: unreadable config.json ({err})") from None
        if isinstance(record, dict) and record.get("_class_name") == "ControlNetModel":
            from ..formats.controlnet import load_diffusers_controlnet

            branch = load_diffusers_controlnet(path)
        else:
            try:
                branch = load_component(path)
            except ComponentError as err:
                raise ValueError(f"control model: {err}") from None
            if not isinstance(branch, ControlNet | ControlAdapter):
                raise ValueError(f"control model {path}: holds a {type(branch).__name__}, not a control")
    elif path.is_file():
        from ..formats.controlnet import load_single_file_controlnet

        branch = load_single_file_controlnet(path, net.config)
    else:
        raise ValueError(f"control model {source}: no such file or folder")
    check_fits(branch, net, str(source))
    return branch.eval().requires_grad_(False)


def check_fits(branch: ControlNet | ControlAdapter, net: nn.Module, name: str) -> None:
    """ValueError unless the branch's residuals fit ``net``'s skips (same encoder widths and text width)."""
    cfg, theirs = branch.config, getattr(net, "config", None)
    keys = ("channels", "channel_mult", "blocks_per_level", "text_dim")
    if (
        theirs is None
        or not hasattr(net, "encode")
        or any(getattr(cfg, k) != getattr(theirs, k, None) for k in keys)
    ):
        raise ValueError(
            f"control model {name} is for another network (its encoder: "
            + ", ".join(f"{k}={getattr(cfg, k)}" for k in keys)
            + ")"
        )


def own_control(model_folder: Path | None) -> Path | None:
    """The model folder's own control branch (its ``control/`` sub-folder), or None when it has none."""
    if model_folder is None or not (model_folder / DEFAULT_CONTROL).is_dir():
        return None
    return model_folder / DEFAULT_CONTROL


def build_controls(
    specs: tuple[ControlSpec, ...],
    net: nn.Module,
    model_folder: Path | None,
    size: tuple[int, int],
    cache: dict,
) -> list[Control]:
    """Controls ready to sample with: branches loaded (once per source, kept in ``cache``) and maps made at
    the branch's map size for an input of ``size`` (H, W) cells."""
    controls = []
    for spec in specs:
        own = own_control(model_folder) if spec.model is None else None
        if spec.model is None and own is None:
            raise OptionError("control_model", "this model has no control of its own: give a control model")
        source = spec.model or str(own)
        if source not in cache:
            cache[source] = load_control_branch(source, net)
        branch = cache[source]
        factor = branch.config.hint_factor
        image = spec.image if isinstance(spec.image, Image.Image) else read_map(spec.image)
        hint = make_map(image, spec.kind, (size[0] * factor, size[1] * factor))  # [3, H, W]
        if hint.shape[0] != branch.config.hint_channels:
            raise ControlMapError(f"control model {source} takes {branch.config.hint_channels}-channel maps")
        controls.append(Control(branch, hint[None], spec.scale, spec.window))
    return controls


def map_tensor(control: Control) -> Tensor:
    """The map a control runs on, [3, H, W] in [0, 1] (for previews and tests)."""
    return control.image[0]
