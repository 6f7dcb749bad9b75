"""Stable Diffusion weights people already have → noisecraft's own modules (Rombach et al. 2022).

Two layouts: a diffusers folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
``scheduler/``) and a single ``.safetensors`` file in the original layout (``model.diffusion_model.``,
``first_stage_model.``, ``cond_stage_model.``), whose kind is read from its tensors. Tensors are read
lazily, one at a time. Pickled files (``.ckpt``, ``.bin``, ``.pt``) are refused, never opened.
Supported: SD 1.x and 2.x (ε or v) and SDXL base (Podell et al. 2023), as folders or single files
(SD 2's and SDXL's OpenCLIP text towers are converted), inpainting U-Nets (9 input channels) too; the
SDXL refiner (one text encoder, aesthetic-score conditioning) is refused with a message saying so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..nets.autoencoder import AutoencoderKL
from ..nets.unet import UNet
from ..schedules import vp_alphas_cumprod, vp_sigmas
from ..text.clip import SDTextEncoder
from .architecture import ArchitectureHints, beside, read_hints, read_json_object
from .keys import CheckpointError, convert
from .open_clip import PREFIX as OPEN_CLIP_PREFIX
from .open_clip import SDXL_PREFIX as SDXL_OPEN_CLIP_PREFIX
from .open_clip import text_from_open_clip
from .tensor_file import TensorFile
from .unet import unet_config_from_diffusers, unet_config_from_original, unet_map
from .vae import (
    diffusers_name,
    first_stage_part,
    infer_vae_config,
    original_name,
    undeprecate_diffusers,
    vae_config_from_diffusers,
    vae_from_diffusers,
    vae_from_original,
)

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
UNET_PREFIX, TEXT_PREFIX = "model.diffusion_model.", "cond_stage_model.transformer."
SDXL_TEXT_PREFIX = "conditioner.embedders.0.transformer."  # ViT-L in transformers' names
SDXL_SCALE = 0.13025  # SDXL's autoencoder latent scale (SD 1/2: 0.18215)
# DDPM buffers an original checkpoint stores beside the networks: the schedule, which we rebuild.
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "model_ema.decay", "model_ema.num_updates",
)  # fmt: skip
SD_SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def is_foreign(path: Path) -> bool:
    """Whether ``path`` is a diffusers folder or a weights file, not a noisecraft model folder."""
    return (path / "model_index.json").is_file() or (
        path.is_file() and path.suffix in (".safetensors", *PICKLE_SUFFIXES)
    )


def load_stable_diffusion(
    path: Path, vae: Path | None = None, prediction: str | None = None, config: Path | None = None
) -> tuple[dict[str, Any], nn.Module, nn.Module, AutoencoderKL]:
    """(settings fields, U-Net, text encoder, autoencoder) of a diffusers folder or a single file;
    ``vae`` replaces the autoencoder with one from its own file; ``prediction`` ("eps" or "v") says
    what the U-Net predicts where the files cannot (a single file: ε unless told); ``config`` (a
    diffusers folder or the original .yaml) says what a single file's tensors cannot."""
    if path.suffix in PICKLE_SUFFIXES or (path.is_file() and path.suffix != ".safetensors"):
        raise CheckpointError(
            f"{path}: a pickled checkpoint is never loaded (it can run code); convert it to .safetensors "
            "once with a tool you trust, e.g. safetensors' convert script, and pass that file"
        )
    if path.is_dir():
        if config is not None:
            raise CheckpointError("--config applies to single files: a diffusers folder has its own configs")
        settings, unet, text, autoencoder = _diffusers_folder(path, prediction)
    else:
        found = config if config is not None else beside(path)
        hints = read_hints(found) if found is not None else ArchitectureHints()
        settings, unet, text, autoencoder = _single_file(path, prediction, hints)
    if vae is not None:  # the latent scale belongs to the model family, not to the autoencoder's file
        scale = autoencoder.config.scale_factor
        autoencoder = load_vae_file(vae)
        autoencoder.config.scale_factor = scale
    settings["latent_scale"] = autoencoder.config.scale_factor
    settings["image_size"] = unet.config.image_size * autoencoder.config.downsampling
    return settings, unet, text, autoencoder


def sd_settings(
    name: str, prediction: str, schedule: dict[str, Any] | None = None, sdxl: bool = False
) -> dict[str, Any]:
    """ModelSettings fields of an SD model: the discrete VP table, its σ range, SD's usual defaults
    (SDXL: guidance 5, and an empty negative prompt is zero embeddings, as diffusers and A1111 do)."""
    schedule = {**SD_SCHEDULE, **(schedule or {})}
    for key, wanted in SD_SCHEDULE.items():
        if schedule[key] != wanted:
            raise CheckpointError(f"scheduler {key}={schedule[key]!r} is not supported (only {wanted!r})")
    steps = int(schedule.get("num_train_timesteps", 1000))
    table = vp_sigmas(vp_alphas_cumprod("scaled_linear", steps))  # [T] increasing σ
    precond = {"epsilon": "vp_eps", "eps": "vp_eps", "v_prediction": "vp_v", "v": "vp_v"}.get(prediction)
    if precond is None:
        raise CheckpointError(
            f"prediction {prediction!r} is not supported: eps (epsilon) or v (v_prediction)"
        )
    return dict(
        name=name, channels=3, precond=precond, beta_schedule="scaled_linear", num_train_timesteps=steps,
        sigma_min=float(table[0]), sigma_max=float(table[-1]), steps=25, sampler="dpmpp_2m",
        guidance=5.0 if sdxl else 7.5, zero_empty_negative=sdxl,
    )  # fmt: skip


# -- diffusers folders ---------------------------------------------------------------------------------


def _diffusers_folder(
    folder: Path, prediction: str | None = None
) -> tuple[dict[str, Any], UNet, SDTextEncoder, AutoencoderKL]:
    index = _json(folder / "model_index.json")
    sdxl = _names_part(index, "text_encoder_2")
    if not _names_part(index, "text_encoder"):
        raise CheckpointError(f"{folder}: no text_encoder (an SDXL refiner?): not supported")
    vae_config = vae_config_from_diffusers(_json(folder / "vae" / "config.json"))
    unet_config = unet_config_from_diffusers(_json(folder / "unet" / "config.json"), vae_config.downsampling)
    if unet_config.in_channels not in (4, 9):
        raise CheckpointError(
            f"{folder}: a U-Net with {unet_config.in_channels} input channels is not supported yet"
        )
    unet = load_mapped(
        empty(UNet, unet_config), _weights(folder / "unet"), unet_map(unet_config, "diffusers"), "unet"
    )
    vae = AutoencoderKL(vae_config)
    vae.load_state_dict(vae_from_diffusers(read_all(_weights(folder / "vae")), vae.config))
    text = _folder_text(folder, ["text_encoder", "text_encoder_2"] if sdxl else ["text_encoder"])
    scheduler = _json(folder / "scheduler" / "scheduler_config.json")
    settings = sd_settings(
        folder.name, prediction or scheduler.get("prediction_type", "epsilon"), scheduler, sdxl
    )
    if sdxl:
        settings["zero_empty_negative"] = bool(index.get("force_zeros_for_empty_prompt", True))
    return settings, unet.eval(), text, vae.eval()


def _names_part(index: dict[str, Any], part: str) -> bool:
    """Whether model_index.json names a component ``part`` (a refiner lists its absent ones as nulls)."""
    value = index.get(part)
    return isinstance(value, list) and any(v is not None for v in value)


def _folder_text(folder: Path, parts: list[str]) -> SDTextEncoder:
    """SD 1/2's one CLIP text encoder or SDXL's two, read with their config.json's head counts."""
    configs = [_json(folder / part / "config.json") for part in parts]
    states = [read_all(_weights(folder / part)) for part in parts]
    each = tuple(dict(heads=c.get("num_attention_heads"), activation=c.get("hidden_act")) for c in configs)
    if len(parts) == 2:
        return SDTextEncoder.from_state_dicts("sdxl", *states, each=each)
    preset = "sd1" if each[0]["activation"] in ("quick_gelu", None) else "sd2"  # OpenAI CLIP or OpenCLIP
    return SDTextEncoder.from_state_dicts(preset, *states, each=each)


def _weights(folder: Path) -> Path:
    """The safetensors file of a diffusers component folder (fp32 preferred); pickles are refused."""
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors",
                 "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors"):  # fmt: skip
        if (folder / name).is_file():
            return folder / name
    pickled = [p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES]
    hint = f" (only pickled {pickled[0]}: convert it to safetensors)" if pickled else ""
    raise CheckpointError(f"{folder}: no .safetensors weights{hint}")


def _json(path: Path) -> dict[str, Any]:
    """A diffusers folder's config file, which must be there."""
    value = read_json_object(path)
    if value is None:
        raise CheckpointError(f"{path}: missing (not a complete diffusers folder)")
    return value


# -- single files --------------------------------------------------------------------------------------


def _single_file(
    path: Path, prediction: str | None, hints: ArchitectureHints
) -> tuple[dict[str, Any], UNet, SDTextEncoder, AutoencoderKL]:
    with TensorFile(path) as f:
        names = set(f.keys())
        sdxl = _check_kind(path, names, f)
        vae_state = first_stage_part(
            {n: f.get_tensor(n) for n in names if n.startswith("first_stage_model.")}
        )
        vae_config = infer_vae_config(vae_state, _original_encoder_name)
        shapes = {n[len(UNET_PREFIX) :]: f.shape(n) for n in names if n.startswith(UNET_PREFIX)}
        pooled = f.shape(SDXL_OPEN_CLIP_PREFIX + "text_projection")[1] if sdxl else 0  # [D, P]
        unet_config = (
            unet_config_from_diffusers(hints.unet, vae_config.downsampling)
            if hints.unet is not None
            else unet_config_from_original(
                shapes, hints.heads, vae_config.downsampling, pooled, hints.head_width
            )
        )
        unet_names = {n for n in names if n.startswith(UNET_PREFIX)}
        unet = load_mapped(
            empty(UNet, unet_config), None, unet_map(unet_config, "original"), "unet",
            names={n[len(UNET_PREFIX):] for n in unet_names}, get=lambda n: f.get_tensor(UNET_PREFIX + n),
        )  # fmt: skip
        each = tuple(hints.text)
        text = _sdxl_text(f, names, each) if sdxl else _single_file_text(f, names, each)
    _check_leftovers(path, names, unet_names)
    vae_config.scale_factor = hints.scale_factor or (SDXL_SCALE if sdxl else vae_config.scale_factor)
    vae = AutoencoderKL(vae_config)
    vae.load_state_dict(vae_from_original(vae_state, vae.config))
    settings = sd_settings(path.stem, prediction or hints.prediction or "epsilon", sdxl=sdxl)
    return settings, unet.eval(), text, vae.eval()


def _part(f: TensorFile, names: set[str], prefix: str) -> dict[str, Tensor]:
    """The tensors under ``prefix``, named without it."""
    return {n[len(prefix) :]: f.get_tensor(n) for n in names if n.startswith(prefix)}


def _single_file_text(f: TensorFile, names: set[str], each: tuple[dict[str, Any], ...]) -> SDTextEncoder:
    """SD 1's OpenAI CLIP (transformers names under ``cond_stage_model.transformer.``) or SD 2's
    OpenCLIP (``cond_stage_model.model.``, converted; read at its penultimate layer)."""
    if any(n.startswith(OPEN_CLIP_PREFIX) for n in names):
        state = text_from_open_clip(_part(f, names, OPEN_CLIP_PREFIX))  # SD 2 reads the penultimate layer
        return SDTextEncoder.from_state_dicts("sd2", state, activation="gelu", skip_layers=1, each=each)
    state = _part(f, names, TEXT_PREFIX)
    state.pop("text_model.embeddings.position_ids", None)
    return SDTextEncoder.from_state_dicts("sd1", state, each=each)


def _sdxl_text(f: TensorFile, names: set[str], each: tuple[dict[str, Any], ...]) -> SDTextEncoder:
    """SDXL's ViT-L (transformers names) and OpenCLIP ViT-bigG (converted, with its projection)."""
    clip_l = _part(f, names, SDXL_TEXT_PREFIX)
    clip_l.pop("text_model.embeddings.position_ids", None)
    big_g = text_from_open_clip(
        _part(f, names, SDXL_OPEN_CLIP_PREFIX), SDXL_OPEN_CLIP_PREFIX, projection=True
    )
    return SDTextEncoder.from_state_dicts("sdxl", clip_l, big_g, each=each)


def _check_kind(path: Path, names: set[str], f: Any) -> bool:
    """Whether the file holds SDXL (else SD 1.x/2.x, read from its tensors); CheckpointError if neither."""
    first = UNET_PREFIX + "input_blocks.0.0.weight"
    if first not in names:
        raise CheckpointError(f"{path}: not a Stable Diffusion checkpoint (no {first})")
    in_channels = f.shape(first)[1]
    if in_channels not in (4, 9):  # 9: an inpainting U-Net (latents + mask + masked-image latents)
        raise CheckpointError(f"{path}: a U-Net with {in_channels} input channels is not supported")
    if any(n.startswith("conditioner.") for n in names):
        both = (SDXL_TEXT_PREFIX, SDXL_OPEN_CLIP_PREFIX)
        if not all(any(n.startswith(p) for n in names) for p in both):
            raise CheckpointError(
                f"{path}: SDXL without both text encoders ({' and '.join(both)}): the SDXL refiner and "
                "other variants are not supported"
            )
        return True
    if not any(n.startswith((TEXT_PREFIX, OPEN_CLIP_PREFIX)) for n in names):
        raise CheckpointError(f"{path}: no text encoder (cond_stage_model.*) in this checkpoint")
    return False


def _check_leftovers(path: Path, names: set[str], unet_names: set[str]) -> None:
    parts = (
        "first_stage_model.", TEXT_PREFIX, OPEN_CLIP_PREFIX, SDXL_TEXT_PREFIX, SDXL_OPEN_CLIP_PREFIX,
        "model_ema.",
    )  # fmt: skip
    left = [n for n in names - unet_names if not n.startswith(parts) and n not in SCHEDULE_BUFFERS]
    if left:
        raise CheckpointError(f"{path}: tensor {sorted(left)[0]} belongs to no part of Stable Diffusion")


def _original_encoder_name(key: str) -> str:
    """The original name of an encoder tensor (the decoder's needs the level count, unknown yet)."""
    return original_name(key, 0)


def read_all(path: Path) -> dict[str, Tensor]:
    """Every tensor of a .safetensors file."""
    with TensorFile(path) as f:
        return f.read_all()


def empty(cls: type[nn.Module], config: Any) -> nn.Module:
    """A module built on the meta device: shapes only, no memory and no random initialisation (an SD
    U-Net would otherwise exist twice while loading: random weights, then the file's)."""
    with torch.device("meta"):
        return cls(config)


def load_mapped(
    module: nn.Module, file: Path | None, tensor_map, what: str, names=None, get=None
) -> nn.Module:
    """``module`` (built by ``empty``) holding its tensors from ``file`` (or ``names``/``get``) through
    ``tensor_map``, each read once and put in place."""
    if file is not None:
        with TensorFile(file) as f:
            state = convert(tensor_map, module.state_dict(), set(f.keys()), f.get_tensor, what)
    else:
        state = convert(tensor_map, module.state_dict(), names, get, what)
    module.load_state_dict(state, assign=True)
    for sub in module.modules():  # non-persistent buffers (fixed frequencies) are computed, not stored
        if any(b.is_meta for b in sub.buffers(recurse=False)):
            sub.reset_buffers()
    return module


def load_vae_file(path: Path) -> AutoencoderKL:
    """An autoencoder from its own .safetensors file, in diffusers' or the original naming."""
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: a VAE must be a .safetensors file (pickles are never loaded)")
    state = read_all(path)
    if any(k.startswith("first_stage_model.") for k in state):
        state = first_stage_part(state)
    if any(k.startswith("encoder.down_blocks.") for k in state):
        state = undeprecate_diffusers(state)
        config = infer_vae_config(state, diffusers_name)
        converted = vae_from_diffusers(state, config)
    else:
        config = infer_vae_config(state, _original_encoder_name)
        converted = vae_from_original(state, config)
    vae = AutoencoderKL(config)
    vae.load_state_dict(converted)
    return vae.eval()
