"""Model folders: ``pipeline.json`` (the settings) + ``net/`` + ``text_encoder/`` + ``autoencoder/``
(each a saved component), and the registry of models shipped inside the package."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..components import ComponentError, config_from_dict, load_component, save_component
from ..formats.architecture import read_json_object
from .latent import LatentSpace
from .settings import ModelSettings

SHIPPED_DIR = Path(__file__).parent.parent / "models"
SETTINGS_FILE = "pipeline.json"
TRAINING_FILE = "training.json"


def shipped_models() -> list[str]:
    """Names that ``load_model`` finds inside the package."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / SETTINGS_FILE).is_file())


def find_model(name_or_path: str | os.PathLike) -> Path:
    """The folder of a saved model, or of the shipped model of that name; ValueError naming both kinds."""
    path = Path(name_or_path)
    if (path / SETTINGS_FILE).is_file():
        return path
    if str(name_or_path) in shipped_models():
        return SHIPPED_DIR / str(name_or_path)
    shipped = ", ".join(shipped_models()) or "none installed"
    raise ValueError(
        f"unknown model {str(name_or_path)!r}: not a saved pipeline folder, a diffusers folder or a "
        f".safetensors file; shipped: {shipped}"
    )


def load_model(
    name_or_path: str | os.PathLike,
    vae: str | os.PathLike | None = None,
    prediction: str | None = None,
    config: str | os.PathLike | None = None,
) -> tuple[ModelParts, Path]:
    """A model's parts and where they came from: a noisecraft folder or shipped name, or Stable
    Diffusion weights (a diffusers folder or a single .safetensors file; ``vae`` swaps the autoencoder,
    ``prediction`` says eps or v where the files cannot, ``config`` is a diffusers folder or .yaml
    saying what a single file's tensors cannot)."""
    from ..formats.stable_diffusion import is_foreign, load_stable_diffusion  # only the loader reads formats/

    path = Path(name_or_path).expanduser()
    if is_foreign(path):
        vae_file, config_path = (None if p is None else Path(p).expanduser() for p in (vae, config))
        fields, net, text, autoencoder = load_stable_diffusion(path, vae_file, prediction, config_path)
        settings = ModelSettings(**fields)
        return ModelParts(settings, net, text, LatentSpace(autoencoder, settings.latent_scale)), path
    for flag, value in (("--vae", vae), ("--prediction", prediction), ("--config", config)):
        if value is not None:
            raise ValueError(
                f"{flag} applies to Stable Diffusion weights (a diffusers folder or a .safetensors file)"
            )
    folder = find_model(name_or_path)
    return load_parts(folder), folder


def find_weights(source: str) -> Path:
    """A folder holding ``net/``: a shipped model by name, a saved model, or a training run's ``model/``."""
    folder = SHIPPED_DIR / source if (SHIPPED_DIR / source / "net").is_dir() else Path(source)
    if not (folder / "net").is_dir():
        raise ValueError(f"{source!r} is neither a shipped model nor a folder with net/")
    return folder


def read_settings(folder: Path) -> ModelSettings:
    """``pipeline.json`` of a model folder; ComponentError naming the file when it is unusable."""
    path = folder / SETTINGS_FILE
    try:
        values = json.loads(path.read_text())
        if not isinstance(values, dict):
            raise TypeError(f"expected a JSON object, got {type(values).__name__}")
        return config_from_dict(ModelSettings, values)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, RecursionError) as err:
        raise ComponentError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
    except ValueError as err:  # a field of the wrong type or out of range
        raise ComponentError(f"{path}: {err}") from None


def training_data(folder: Path) -> dict | None:
    """The ``data`` table of the recipe a model folder was trained with (from its ``training.json``):
    {} when the record names none, None when there is no record."""
    path = folder / TRAINING_FILE
    record = read_json_object(path) if path.is_file() else None
    if record is None:
        return None
    data = record.get("config", {})
    data = data.get("data", {}) if isinstance(data, dict) else {}
    return data if isinstance(data, dict) else {}


def write_settings(settings: ModelSettings, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(settings.as_dict(), indent=2, sort_keys=True) + "\n"
    (folder / SETTINGS_FILE).write_text(text)
    return folder / SETTINGS_FILE


@dataclass
class ModelParts:
    """What a model folder holds, loaded: settings, network, text encoder (or None) and latent space."""

    settings: ModelSettings
    net: nn.Module
    text_encoder: nn.Module | None = None
    latent: LatentSpace = field(default_factory=LatentSpace)

    def save(self, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write every part into ``folder``."""
        folder = Path(folder)
        save_component(self.net, folder / "net", dtype)
        if self.text_encoder is not None:
            save_component(self.text_encoder, folder / "text_encoder", dtype)
        if self.latent.autoencoder is not None:
            save_component(self.latent.autoencoder, folder / "autoencoder", dtype)
        write_settings(self.settings, folder)
        return folder

    def save_new(self, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """``save`` into a folder that does not exist yet (nothing of another model is overwritten)."""
        folder = Path(folder)
        if folder.exists():
            raise ValueError(f"{folder} already exists: give a new folder")
        return self.save(folder, dtype)


def load_parts(folder: Path) -> ModelParts:
    """Every part of a model folder; ComponentError when one is missing or does not fit the others."""
    from .. import nets, text  # noqa: F401  (registers the component types)

    settings = read_settings(folder)
    net = load_component(folder / "net")
    encoder = load_component(folder / "text_encoder") if (folder / "text_encoder").exists() else None
    if encoder is not None:  # a loaded model runs, it does not train: prompts are encoded without a graph
        encoder.requires_grad_(False)
    _check_text_width(folder, net, encoder)
    latent = LatentSpace()
    if (folder / "autoencoder").exists():
        try:
            latent = LatentSpace(load_component(folder / "autoencoder"), settings.latent_scale)
        except ValueError as err:
            raise ComponentError(f"{folder / 'autoencoder'}: {err}") from None
    return ModelParts(settings, net, encoder, latent)


def _check_text_width(path: Path, net: nn.Module, encoder: nn.Module | None) -> None:
    """ComponentError when the network reads text of another width than the encoder gives (or none)."""
    want = getattr(net.config, "text_dim", None)
    have = 0 if encoder is None else getattr(encoder, "dim", None)
    if want is not None and want != have:
        missing = " (no text_encoder/ folder)" if encoder is None else ""
        raise ComponentError(
            f"{path}: the network takes text of width {want} but the text encoder gives {have}{missing}"
        )
