"""Pipeline: a text encoder + a network + the σ settings they were trained with → images from prompts.

    pipe = Pipeline.load("shapes")                  # a shipped name, or a saved folder
    images = pipe.generate(["a red circle"], steps=20, sampler="dpmpp_2m", guidance=4.0, seed=0)
    pipe.save("my-model")                           # pipeline.json + net/ + text_encoder/

A seed gives the same image whatever batch it is drawn in: image i of a call uses its own
generator seeded ``seed + i``, for its starting noise and every later draw of the sampler.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn

from .components import ComponentError, config_from_dict, load_component, save_component
from .conditioning import Conditioning
from .denoisers import PRECONDITIONINGS, Denoiser, FixedBatch, precondition
from .guidance import ClassifierFreeGuidance, check_guidance_options
from .images import METADATA_KEY, from_pil, to_pil
from .samplers import Callback, get_sampler
from .schedules import karras, vp_alphas_cumprod
from .text.tokenizer import check_prompts

SHIPPED_DIR = Path(__file__).parent / "models"
PIPELINE_FILE = "pipeline.json"


# The network runs on chunks of this many samples (denoisers.FixedBatch): 4 covers one image with its
# unguided twin (padded) and keeps 4 guided images at 2 calls a step.
BATCH_ROWS = 4


@dataclass
class PipelineConfig:
    """How to turn the network's output into images, and the defaults of ``generate``."""

    name: str = "custom"
    image_size: int = 32
    channels: int = 3
    precond: str = "edm"  # one of denoisers.PRECONDITIONINGS
    sigma_data: float = 0.5
    beta_schedule: str = "linear"  # vp_* only: the training ᾱ table
    num_train_timesteps: int = 1000
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    steps: int = 20
    sampler: str = "dpmpp_2m"
    guidance: float = 4.0

    def __post_init__(self) -> None:
        _check_field_types(self)
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if self.precond not in PRECONDITIONINGS:
            raise ValueError(f"unknown precond {self.precond!r}; valid: {', '.join(PRECONDITIONINGS)}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")


def _check_field_types(config: PipelineConfig) -> None:
    """ValueError naming the first field of a (hand-edited) pipeline.json that has the wrong type."""
    for field in dataclasses.fields(config):
        value, kind = getattr(config, field.name), type(field.default)
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{field.name} must be a positive integer, got {value!r}")
        if kind is float and (
            isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
        ):
            raise ValueError(f"{field.name} must be a finite number, got {value!r}")
        if kind is str and not isinstance(value, str):
            raise ValueError(f"{field.name} must be a string, got {value!r}")


def shipped_models() -> list[str]:
    """Names that ``Pipeline.load`` finds inside the package."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / PIPELINE_FILE).is_file())


class Pipeline:
    """Text → image with a trained network; also image-to-image (SDEdit) and inpainting."""

    def __init__(self, net: nn.Module, text_encoder: nn.Module | None, config: PipelineConfig):
        self.net, self.text_encoder, self.config = net.eval(), text_encoder, config
        if text_encoder is not None:
            text_encoder.eval()
        alphas = None
        if config.precond.startswith("vp_"):
            alphas = vp_alphas_cumprod(config.beta_schedule, config.num_train_timesteps)
        self.denoiser: Denoiser = precondition(net, config.precond, config.sigma_data, alphas)
        self._weights_hash: str | None = None
        self.source: str | None = None  # what ``load`` was given: a shipped name or a folder

    # -- saving and loading -----------------------------------------------------------------

    def save(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write ``pipeline.json``, ``net/`` and (if any) ``text_encoder/`` into ``path``."""
        path = Path(path)
        save_component(self.net, path / "net", dtype)
        if self.text_encoder is not None:
            save_component(self.text_encoder, path / "text_encoder", dtype)
        text = json.dumps(dataclasses.asdict(self.config), indent=2, sort_keys=True) + "\n"
        (path / PIPELINE_FILE).write_text(text)
        return path

    @classmethod
    def load(cls, name_or_path: str | os.PathLike) -> Pipeline:
        """A shipped model by name (``shipped_models()``) or a folder written by ``save``."""
        path = Path(name_or_path)
        if not (path / PIPELINE_FILE).is_file():
            if str(name_or_path) not in shipped_models():
                shipped = ", ".join(shipped_models()) or "none installed"
                raise ValueError(
                    f"unknown model {str(name_or_path)!r}: not a saved pipeline folder; shipped: {shipped}"
                )
            path = SHIPPED_DIR / str(name_or_path)
        from . import nets, text  # noqa: F401  (registers the component types)

        try:
            values = json.loads((path / PIPELINE_FILE).read_text())
            if not isinstance(values, dict):
                raise TypeError(f"expected a JSON object, got {type(values).__name__}")
            config = config_from_dict(PipelineConfig, values)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as err:
            raise ComponentError(f"{path / PIPELINE_FILE}: unreadable ({err})") from None
        except ValueError as err:  # a field of the wrong type or out of range
            raise ComponentError(f"{path / PIPELINE_FILE}: {err}") from None
        net = load_component(path / "net")
        encoder = load_component(path / "text_encoder") if (path / "text_encoder").exists() else None
        _check_text_width(path, net, encoder)
        pipe = cls(net, encoder, config)
        pipe.source = str(name_or_path) if path.parent == SHIPPED_DIR else str(path.resolve())
        return pipe

    @property
    def weights_hash(self) -> str:
        """First 16 hex digits of a SHA-256 over the network's and encoder's tensors."""
        if self._weights_hash is None:
            digest = hashlib.sha256()
            modules = [self.net] + ([self.text_encoder] if self.text_encoder is not None else [])
            for module in modules:
                for key, value in sorted(module.state_dict().items()):
                    digest.update(key.encode())
                    digest.update(value.detach().cpu().contiguous().numpy().tobytes())
            self._weights_hash = digest.hexdigest()[:16]
        return self._weights_hash

    # -- the three jobs -----------------------------------------------------------------------

    def generate(
        self,
        prompts: str | list[str],
        negative_prompt: str | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        guidance: float | None = None,
        seed: int = 0,
        callback: Callback | None = None,
        num_images: int = 1,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
    ) -> list[Image.Image]:
        """Text to image: ``num_images`` per prompt, image i seeded ``seed + i``.

        ``guidance_rescale``: φ of guidance rescale (Lin et al. 2023), 0 = off. ``guidance_interval``:
        (lo, hi), guide only where lo < σ ≤ hi (Kynkäänniemi et al. 2024); None = at every σ.
        """
        prompts = _expand(prompts, num_images)
        options = dict(guidance_rescale=guidance_rescale, guidance_interval=guidance_interval)
        x = self.sample(prompts, negative_prompt, steps, sampler, guidance, seed, callback, **options)
        return self._finish(
            x, prompts, negative_prompt, steps, sampler, guidance, seed, **_metadata(**options)
        )

    def img2img(
        self,
        prompts: str | list[str],
        image: Image.Image | Tensor,
        strength: float = 0.6,
        negative_prompt: str | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        guidance: float | None = None,
        seed: int = 0,
        callback: Callback | None = None,
        num_images: int = 1,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
    ) -> list[Image.Image]:
        """SDEdit (Meng et al. 2022): noise the image to the σ of ``strength`` and denoise from there.

        strength 0 returns the input; strength 1 ignores it (the same as ``generate``).
        """
        prompts = _expand(prompts, num_images)
        init = self._as_batch(image, len(prompts))
        options = dict(guidance_rescale=guidance_rescale, guidance_interval=guidance_interval)
        x = self.sample(
            prompts, negative_prompt, steps, sampler, guidance, seed, callback,
            init=init, strength=strength, **options,
        )  # fmt: skip
        return self._finish(
            x,
            prompts,
            negative_prompt,
            steps,
            sampler,
            guidance,
            seed,
            strength=strength,
            **_metadata(**options),
        )

    def inpaint(
        self,
        prompts: str | list[str],
        image: Image.Image | Tensor,
        mask: Image.Image | Tensor,
        negative_prompt: str | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        guidance: float | None = None,
        seed: int = 0,
        callback: Callback | None = None,
        num_images: int = 1,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
    ) -> list[Image.Image]:
        """Repaint where ``mask`` is white (1); keep every other pixel of ``image`` exactly."""
        prompts = _expand(prompts, num_images)
        init = self._as_batch(image, len(prompts))
        keep = 1 - self._as_mask(mask, len(prompts))  # [B, 1, H, W], 1 where the image is kept
        options = dict(guidance_rescale=guidance_rescale, guidance_interval=guidance_interval)
        x = self.sample(
            prompts, negative_prompt, steps, sampler, guidance, seed, callback,
            init=init, keep=keep, **options,
        )  # fmt: skip
        return self._finish(
            x, prompts, negative_prompt, steps, sampler, guidance, seed, inpaint=True, **_metadata(**options)
        )

    # -- the engine ----------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        negative_prompt: str | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        guidance: float | None = None,
        seed: int = 0,
        callback: Callback | None = None,
        init: Tensor | None = None,
        strength: float = 1.0,
        keep: Tensor | None = None,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
    ) -> Tensor:
        """The sampled batch [B, C, H, W] in [-1, 1] before conversion to PIL."""
        c = self.config
        steps = c.steps if steps is None else steps
        guidance = c.guidance if guidance is None else guidance
        _check_settings(steps, guidance, strength)
        interval = _check_interval(guidance_rescale, guidance_interval)
        check_seed(seed, len(prompts))
        sample_fn = get_sampler(sampler or c.sampler)
        sigmas = karras(steps, c.sigma_min, c.sigma_max, c.rho)
        gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
        shape = (c.channels, c.image_size, c.image_size)
        noise = torch.stack([torch.randn(shape, generator=g) for g in gens])  # [B, C, H, W]
        start = min(steps, round(steps * (1 - strength))) if init is not None and keep is None else 0
        if start == steps:  # strength 0: nothing to do
            return init
        sigmas = sigmas[start:]
        x = noise * sigmas[0] if start == 0 else init + noise * sigmas[0]
        denoiser, cond = self._guided(prompts, negative_prompt, guidance, guidance_rescale, interval)
        if keep is not None:
            denoiser = _KeepKnown(denoiser, init, keep)
            x = x + keep * init
        out = sample_fn(denoiser, x, sigmas, cond, generator=gens, callback=callback)
        return out if keep is None else keep * init + (1 - keep) * out

    def encode(self, prompts: list[str]) -> Conditioning | None:
        """The text encoder's Conditioning for ``prompts`` (None for an unconditional model).

        Each distinct prompt is encoded alone and padded to the encoder's full context: an encoder's and
        a network's rounding depend on the shapes they run at (batch, token count), and a prompt must
        condition its images the same in any batch.
        """
        if self.text_encoder is None:
            return None
        alone = {p: self.text_encoder([p]) for p in dict.fromkeys(check_prompts(prompts))}
        return Conditioning.cat([alone[p] for p in prompts], length=int(self.text_encoder.max_length))

    def _guided(
        self,
        prompts: list[str],
        negative: str | None,
        guidance: float,
        rescale: float = 0.0,
        interval: tuple[float, float] = (0.0, math.inf),
    ) -> tuple[Denoiser, Conditioning | None]:
        cond = self.encode(prompts)
        denoiser = FixedBatch(self.denoiser, BATCH_ROWS)  # a seed's image whatever its batch
        if cond is None or guidance == 1.0:
            return denoiser, cond
        uncond = self.encode([negative or ""])
        return ClassifierFreeGuidance(denoiser, guidance, uncond, rescale, sigma_interval=interval), cond

    def _as_batch(self, image: Image.Image | Tensor, batch: int) -> Tensor:
        """An init image (PIL or [C, H, W] / [1, C, H, W] tensor in [-1, 1]) as [B, C, H, W]."""
        c = self.config
        if isinstance(image, Image.Image):
            image = from_pil(image, c.channels, c.image_size)
        if not isinstance(image, Tensor) or image.ndim not in (3, 4):
            raise ValueError("the init image must be a PIL image or a [C, H, W] tensor")
        image = image[None] if image.ndim == 3 else image
        expected = (c.channels, c.image_size, c.image_size)
        if tuple(image.shape[1:]) != expected:
            raise ValueError(f"init image has shape {tuple(image.shape[1:])}, the model makes {expected}")
        return image.float().expand(batch, *expected)

    def _as_mask(self, mask: Image.Image | Tensor, batch: int) -> Tensor:
        """A mask (PIL, white = repaint; or a tensor in [0, 1]) as [B, 1, H, W] in {0, 1}."""
        size = self.config.image_size
        if isinstance(mask, Image.Image):
            if mask.size != (size, size):
                raise ValueError(
                    f"mask is {mask.size[0]}×{mask.size[1]}, the model makes {size}×{size} images"
                )
            mask = (from_pil(mask, 1) > 0).float()
        if not isinstance(mask, Tensor) or tuple(mask.shape[-2:]) != (size, size):
            raise ValueError(f"mask must be a {size}×{size} image or tensor")
        return (mask.reshape(-1, 1, size, size) > 0.5).float().expand(batch, 1, size, size)

    def _finish(
        self, x: Tensor, prompts: list[str], negative, steps, sampler, guidance, seed, **extra
    ) -> list[Image.Image]:
        """PIL images carrying their generation parameters in ``image.info[METADATA_KEY]``."""
        c = self.config
        images = to_pil(x)
        for i, (image, prompt) in enumerate(zip(images, prompts)):
            image.info[METADATA_KEY] = {
                "prompt": prompt,
                "negative_prompt": negative,
                "steps": c.steps if steps is None else steps,
                "sampler": sampler or c.sampler,
                "guidance": c.guidance if guidance is None else guidance,
                "seed": seed + i,
                "size": [c.image_size, c.image_size],
                "model": self.source or c.name,
                "weights": self.weights_hash,
                **extra,
            }
        return images


def _check_text_width(path: Path, net: nn.Module, encoder: nn.Module | None) -> None:
    """ComponentError when the network reads text of another width than the encoder gives (or none)."""
    want = getattr(net.config, "text_dim", None)
    have = 0 if encoder is None else getattr(encoder, "dim", None)
    if want is not None and want != have:
        missing = " (no text_encoder/ folder)" if encoder is None else ""
        raise ComponentError(
            f"{path}: the network takes text of width {want} but the text encoder gives {have}{missing}"
        )


class _KeepKnown(nn.Module):
    """Inpainting as a Denoiser: the known region's x̂0 is the known image, so every sampler keeps it."""

    def __init__(self, denoiser: Denoiser, known: Tensor, keep: Tensor):
        super().__init__()
        self.denoiser, self.known, self.keep = denoiser, known, keep  # [B, C, H, W], [B, 1, H, W]

    def forward(self, x: Tensor, sigma: Tensor, cond: Conditioning | None = None) -> Tensor:
        return self.keep * self.known + (1 - self.keep) * self.denoiser(x, sigma, cond)


def _expand(prompts: str | list[str], num_images: int) -> list[str]:
    """Each prompt repeated ``num_images`` times, checked."""
    prompts = [prompts] if isinstance(prompts, str) else prompts
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a string or a non-empty list of strings")
    if int(num_images) != num_images or num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images}")
    return [p for p in prompts for _ in range(num_images)]


def _check_interval(rescale: float, interval: tuple[float, float] | None) -> tuple[float, float]:
    """The checked (lo, hi) to guide in; None = every σ. A given interval needs a finite hi: it is
    stored as JSON in the images it makes (a model's σ_max already bounds the walk)."""
    if interval is None:
        return check_guidance_options(rescale, (0.0, math.inf))
    lo, hi = check_guidance_options(rescale, interval)
    if not math.isfinite(hi):
        raise ValueError(f"the guidance interval needs a finite upper σ, got {hi}")
    return lo, hi


def _metadata(guidance_rescale: float, guidance_interval: tuple[float, float] | None) -> dict:
    """The non-default guidance options (already checked by ``sample``) as PNG metadata."""
    meta: dict = {}
    if guidance_rescale != 0.0:
        meta["guidance_rescale"] = float(guidance_rescale)
    if guidance_interval is not None:
        meta["guidance_interval"] = [float(v) for v in guidance_interval]
    return meta


def _check_settings(steps: int, guidance: float, strength: float) -> None:
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if not math.isfinite(guidance):
        raise ValueError(f"guidance must be a finite number, got {guidance}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")


def check_seed(seed: int, count: int = 1) -> None:
    """ValueError unless seeds ``seed`` … ``seed + count - 1`` can all seed a torch generator (64 bits)."""
    if int(seed) != seed or not -(2**63) <= seed <= 2**64 - count:
        raise ValueError(
            f"seed must be an integer from -2**63 to 2**64 - {count} (image i uses seed + i), got {seed}"
        )
