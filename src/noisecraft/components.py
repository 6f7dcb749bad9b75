"""Save and load components (networks, text encoders): constructor config as JSON + safetensors weights.

A component is an ``nn.Module`` whose ``__init__`` takes one config dataclass and whose class is
registered here under a short type name. A saved component is a folder::

    config.json        {"type": "unet", "config": {...}, "format": 1}
    model.safetensors  the state dict (omitted when the component has no trainable state)

Loading never unpickles anything: the type name picks a class from this registry, the JSON fills
its dataclass, and safetensors fills the tensors. As in diffusers, every registered class also has
``Cls.from_pretrained(folder)`` and ``module.save_pretrained(folder)``: the same two functions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT = 1
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
MAX_CONFIG_INT = 2**20  # any integer of a component config (widths, depths, vocabulary sizes)

COMPONENTS: dict[str, type[nn.Module]] = {}
T = TypeVar("T", bound=type[nn.Module])


class ComponentError(ValueError):
    """A saved component that cannot be loaded: missing files, unknown type, mismatched weights."""


def register_component(name: str):
    """Class decorator: make ``cls`` loadable under ``name``; cls needs a ``config_class`` attribute."""

    def wrap(cls: T) -> T:
        if not dataclasses.is_dataclass(getattr(cls, "config_class", None)):
            raise TypeError(f"{cls.__name__} needs a dataclass attribute `config_class`")
        COMPONENTS[name] = cls
        cls.component_type = name
        cls.from_pretrained = classmethod(_from_pretrained)
        cls.save_pretrained = save_component
        return cls

    return wrap


def _from_pretrained(cls: type[nn.Module], folder: str | os.PathLike) -> nn.Module:
    """diffusers' spelling of ``load_component(folder, expected=cls)``."""
    return load_component(folder, expected=cls)


def config_from_dict(config_class: type, values: dict[str, Any]) -> Any:
    """Build a config dataclass from a dict, naming unknown or missing fields in the error."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ComponentError(
            f"unknown field(s) {unknown} for {config_class.__name__}; accepted: {sorted(fields)}"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    for key, value in values.items():
        numbers = value if isinstance(value, tuple) else (value,)
        if any(isinstance(n, int) and abs(n) > MAX_CONFIG_INT for n in numbers):
            raise ComponentError(f"{config_class.__name__}.{key} = {value!r} is beyond {MAX_CONFIG_INT}")
    try:
        return config_class(**values)
    except TypeError as err:
        raise ComponentError(f"bad {config_class.__name__}: {err}") from None


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; saved models are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_component(module: nn.Module, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Save a registered component to ``folder`` (created); ``dtype`` optionally casts float weights."""
    name = getattr(type(module), "component_type", None)
    if name is None:
        raise TypeError(f"{type(module).__name__} is not a registered component")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    if state:
        _atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(state, tmp))
    record = {**component_record(module), "format": FORMAT}
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    _atomic_write(folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
    return folder


def read_component_config(folder: str | os.PathLike) -> tuple[type[nn.Module], Any]:
    """The class and config dataclass a saved component folder describes."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise ComponentError(f"{folder}: no {CONFIG_FILE} — not a saved noisecraft component")
    try:
        record = json.loads(path.read_text())
        name, values = record["type"], record["config"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as err:
        raise ComponentError(f"{path}: unreadable component config ({type(err).__name__}: {err})") from None
    if not isinstance(values, dict):
        raise ComponentError(f"{path}: unreadable component config (config is not a JSON object)")
    if name not in COMPONENTS:
        raise ComponentError(f"{path}: unknown component type {name!r}; known: {sorted(COMPONENTS)}")
    return component_class(name, values)


def component_record(module: nn.Module) -> dict[str, Any]:
    """{"type": its registered name, "config": its config as a dict}: what config.json records of it."""
    return {"type": module.component_type, "config": dataclasses.asdict(module.config)}


def component_class(name: str, values: dict[str, Any]) -> tuple[type[nn.Module], Any]:
    """The registered class ``name`` (one ``COMPONENTS`` holds) and its config filled from ``values``."""
    cls = COMPONENTS[name]
    return cls, config_from_dict(cls.config_class, values)


def load_component(folder: str | os.PathLike, expected: type[nn.Module] | None = None) -> nn.Module:
    """Rebuild a component saved by ``save_component``; weights are cast to the module's dtype."""
    cls, config = read_component_config(folder)
    if expected is not None and not issubclass(cls, expected):
        raise ComponentError(f"{folder}: holds a {cls.__name__}, expected a {expected.__name__}")
    weights = Path(folder) / WEIGHTS_FILE
    _check_size(cls, config, weights)
    module = cls(config)
    expected_keys = module.state_dict()
    if not expected_keys:
        return module.eval()
    if not weights.is_file():
        raise ComponentError(f"{folder}: {WEIGHTS_FILE} is missing")
    try:
        state = load_file(weights)
    except Exception as err:  # safetensors raises several types for corrupt files
        raise ComponentError(f"{weights}: corrupt weights file ({err})") from None
    missing, extra = sorted(set(expected_keys) - set(state)), sorted(set(state) - set(expected_keys))
    if missing or extra:
        raise ComponentError(
            f"{weights}: weights do not fit the config (missing {missing[:5]}, extra {extra[:5]})"
        )
    for key, value in state.items():
        if value.shape != expected_keys[key].shape:
            raise ComponentError(
                f"{weights}: {key} has shape {tuple(value.shape)}, expected {tuple(expected_keys[key].shape)}"
            )
        check_weight(key, value, expected_keys[key].dtype, weights)
        state[key] = value.to(expected_keys[key].dtype)
    module.load_state_dict(state)
    return module.eval()


def check_weight(key: str, value: torch.Tensor, wanted: torch.dtype, source: str | os.PathLike) -> None:
    """ComponentError unless a floating weight is stored as floating point and every value is finite."""
    if not wanted.is_floating_point:
        return
    if not value.is_floating_point():
        raise ComponentError(f"{source}: {key} is stored as {value.dtype}, not floating point")
    if not torch.isfinite(value).all():
        raise ComponentError(f"{source}: {key} holds NaN or infinity (damaged weights)")


def _check_size(cls: type[nn.Module], config: Any, weights: Path) -> None:
    """Before allocating: the config's tensors, built on the meta device (no memory), must fit in the
    weights file at two bytes each (float16) at least; a damaged or hostile config.json is refused here."""
    if not weights.is_file():  # a component without weights (a frozen packaged encoder) or a missing file
        return
    try:
        with torch.device("meta"):
            numel = sum(t.numel() for t in cls(config).state_dict().values())
    except Exception:  # a component that cannot be built without data: checked when loaded instead
        return
    stored = weights.stat().st_size
    if numel * 2 > stored:
        raise ComponentError(
            f"{weights.parent}: the config describes {numel:,} weights, more than {weights.name} "
            f"({stored:,} bytes) can hold"
        )
