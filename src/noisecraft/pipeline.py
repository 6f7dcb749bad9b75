"""Pipeline: a text encoder + a network + the settings they were trained with → images from prompts.

    pipe = Pipeline.load("shapes")                  # a shipped name, or a saved folder
    images = pipe.generate(["a red circle"], steps=20, sampler="dpmpp_2m", guidance=4.0, seed=0)
    pipe.save("my-model")                           # pipeline.json + net/ + text_encoder/

Every job is one ``GenerationRequest`` through ``run``: text to image, image to image when it has an
init image, inpainting when it also has a mask. ``generate``, ``img2img`` and ``inpaint`` build
that request. Sampling options (``model.SamplingOptions``) are checked once and take the model's
defaults where left out. A seed gives the same image whatever batch it is drawn in: image i of a
call uses its own generator seeded ``seed + i``, for its starting noise and every later draw.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from .conditioning import Conditioning
from .devices import Placement, resolve_placement
from .images import METADATA_KEY, path_field, to_pil
from .model import (
    SETTINGS_FILE,
    SHIPPED_DIR,
    ControlSpec,
    LatentSpace,
    ModelParts,
    ModelSettings,
    OptionError,
    SamplingOptions,
    build_controls,
    encode_prompts,
    load_model,
    sample,
    shipped_models,
)
from .model.adapters import (
    Adapter,
    ModelAdapters,
    adapter_record,
    find_adapter,
    parse_spec,
    prompt_adapters,
)
from .model.hashing import weights_hash
from .model.inputs import GenerationRequest, expand_prompts, init_batch, mask_batch
from .model.upscale import BASE_FOLDER, check_small, enlarge, stage_callbacks
from .noise import check_seed
from .samplers import Callback
from .text.vocabulary import heard_as, unwrap

# Names kept for the code and the scripts that import them from here.
PipelineConfig = ModelSettings
PIPELINE_FILE = SETTINGS_FILE
__all__ = [
    "PIPELINE_FILE", "SHIPPED_DIR", "GenerationRequest", "Pipeline", "PipelineConfig", "check_seed",
    "shipped_models",
]  # fmt: skip


class Pipeline:
    """Text → image with a trained network; also image-to-image (SDEdit) and inpainting."""

    def __init__(
        self,
        net: nn.Module,
        text_encoder: nn.Module | None,
        config: ModelSettings,
        latent: LatentSpace | None = None,
    ):
        self.net, self.text_encoder, self.config = net.eval(), text_encoder, config
        self.latent = latent or LatentSpace()
        if text_encoder is not None:
            text_encoder.eval()
        self.denoiser = config.denoiser(net)
        self.placement = Placement()  # the CPU in float32 until ``to`` moves it
        self._weights_hash: str | None = None
        self.source: str | None = None  # what ``load`` was given: a shipped name or a folder
        self.loras: list[tuple[Adapter, float]] = []  # adapters on every request (add_lora)
        self.lora_dir: Path | None = None  # where <lora:NAME> in a prompt is looked up
        self._adapters: ModelAdapters | None = None
        self.origin: Path | None = None  # the model's folder (a file for single-file weights)
        self._branches: dict[str, nn.Module] = {}  # control branches loaded, by source
        self.base: Pipeline | None = None  # an upscaler's: the model making the pictures it enlarges

    # -- saving and loading -----------------------------------------------------------------

    def save(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write ``pipeline.json``, ``net/`` and any of ``text_encoder/``, ``autoencoder/``, ``base/``."""
        folder = ModelParts(self.config, self.net, self.text_encoder, self.latent).save(path, dtype)
        if self.base is not None:
            self.base.save(folder / BASE_FOLDER, dtype)
        return folder

    @classmethod
    def load(
        cls,
        name_or_path: str | os.PathLike,
        vae: str | os.PathLike | None = None,
        prediction: str | None = None,
        config: str | os.PathLike | None = None,
        loras: list[str | tuple[str, float]] = (),
        lora_dir: str | os.PathLike | None = None,
    ) -> Pipeline:
        """A shipped model by name (``shipped_models()``), a folder written by ``save``, or Stable
        Diffusion weights: a diffusers folder or a single ``.safetensors`` file (``vae``: another
        autoencoder file for it; ``prediction``: "eps" or "v", what a single file's U-Net predicts;
        ``config``: a diffusers folder or the original .yaml, for what a single file cannot say;
        ``loras``: LoRA files, each ``"FILE[:SCALE]"`` or (file, scale), merged into the weights;
        ``lora_dir``: the folder ``<lora:NAME:SCALE>`` in a prompt names files of)."""
        parts, origin = load_model(name_or_path, vae, prediction, config)
        pipe = cls(parts.net, parts.text_encoder, parts.settings, parts.latent)
        pipe.source = str(name_or_path) if origin.parent == SHIPPED_DIR else str(origin.resolve())
        pipe.lora_dir = None if lora_dir is None else Path(lora_dir).expanduser()
        for spec in loras:
            pipe.add_lora(*((spec,) if isinstance(spec, tuple) else parse_spec(str(spec))))
        pipe.origin = origin
        if parts.settings.upscale_from:  # a cascade (model/upscale.py): its base model is in base/
            if not (origin / BASE_FOLDER / SETTINGS_FILE).is_file():
                missing = f"{origin} is an upscaler without {BASE_FOLDER}/"
                raise ValueError(f"{missing}, the model making the pictures it enlarges")
            pipe.base = cls.load(origin / BASE_FOLDER)
        return pipe

    from_pretrained, save_pretrained = load, save  # diffusers' spelling of the same two methods
    # -- LoRA adapters (Hu et al. 2021) ------------------------------------------------------------

    def add_lora(self, path: str | os.PathLike, scale: float = 1.0) -> Adapter:
        """Merge a LoRA file (kohya or diffusers/peft names) into the weights at ``scale``, for every
        request from now on; the same file again replaces its scale. AdapterError (a ValueError) for an
        adapter made for another model."""
        adapter = self.adapter_set.load(path)
        kept = [(a, s) for a, s in self.loras if a.path.resolve() != adapter.path.resolve()]
        self.loras = [*kept, (adapter, float(scale))]
        self._apply_adapters(self.loras)
        return adapter

    def clear_loras(self) -> None:
        """Remove every adapter: the base weights again, exactly."""
        self.loras = []
        self._apply_adapters([])

    @property
    def adapter_set(self) -> ModelAdapters:
        if self._adapters is None:
            self._adapters = ModelAdapters(self.net, self.text_encoder)
        return self._adapters

    def _apply_adapters(self, chosen: list[tuple[Adapter, float]]) -> None:
        if chosen or self._adapters is not None:
            if chosen and not self.adapter_set.active:
                _ = self.weights_hash  # the base model's, taken before any merge
            self.adapter_set.set(chosen)

    def _prompt_loras(
        self, prompts: list[str], negative: str | None
    ) -> tuple[list[str], str | None, list[tuple[Adapter, float]]]:
        """Prompts without their ``<lora:…>`` tags, and the adapters to run: ``self.loras`` + tags (all
        prompts of a request must name the same ones)."""
        parsed = [prompt_adapters(p) for p in prompts]
        tags = {tuple(found) for _, found in parsed}
        if len(tags) > 1:
            raise OptionError("prompt", "every prompt of one request must name the same <lora:…> adapters")
        clean_negative, negative_tags = prompt_adapters(negative) if negative else (negative, [])
        chosen = list(self.loras)
        for name, scale in [*next(iter(tags)), *negative_tags]:
            chosen.append((self.adapter_set.load(find_adapter(name, self.lora_dir)), scale))
        return [p for p, _ in parsed], clean_negative, chosen

    @property
    def weights_hash(self) -> str:
        """First 16 hex digits of a SHA-256 over the network's and encoder's tensors (and a base's)."""
        if self._weights_hash is None:
            modules = [self.net] + ([self.text_encoder] if self.text_encoder is not None else [])
            base = (self.base.weights_hash,) if self.base is not None else ()
            self._weights_hash = weights_hash(modules, base)
        return self._weights_hash

    def to(
        self, device: Placement | str | torch.device = "auto", dtype: str | torch.dtype = "fp32"
    ) -> Pipeline:
        """Run on ``device`` (auto: CUDA, then MPS, else the CPU) with weights in ``dtype`` (fp16/bf16 on a
        GPU only), or as a ``devices.Placement`` says; returns the pipeline. A seed's starting noise is
        drawn on the CPU whatever the device, so it is the same everywhere; the pixels differ slightly."""
        placement = device if isinstance(device, Placement) else resolve_placement(device, dtype)
        _ = self.weights_hash  # taken before any cast: it names the weights as saved, on any device
        for module in (self.net, self.text_encoder, self.latent.autoencoder):
            placement.place(module)
        if self.base is not None:
            self.base.to(placement)
        net = torch.compile(self.net) if placement.compile else self.net
        self.denoiser = self.config.denoiser(net)  # σ tables stay on the CPU: MPS has no float64
        self.placement = placement
        return self

    # -- the one entry point and its three spellings ----------------------------------------------

    def run(self, request: GenerationRequest, callback: Callback | None = None) -> list[Image.Image]:
        """The images of one request, each carrying its generation parameters in ``image.info``."""
        options = request.options.resolve(self.config)
        if self.config.upscale_from and (request.init is not None or request.controls):
            refused = "an upscaler makes pictures from text only: no init image, mask or control"
            raise OptionError("init", refused)
        asked = expand_prompts(request.prompts, request.num_images)
        prompts, negative, adapters = self._prompt_loras(asked, request.negative_prompt)
        self._apply_adapters(adapters)
        init = keep = None
        size = self.check_size(options)
        if request.mask is not None:
            keep = 1 - mask_batch(request.mask, len(prompts), size)  # [B, 1, H, W], 1 where kept
        if request.init is not None:
            init = init_batch(request.init, len(prompts), self.config.channels, size)
        controls = self.controls(request.controls, options)
        with self.placement.context():  # autocast in half precision, an SDPA kernel if one is forced
            x = self._sample(
                prompts, negative, options, callback, init, keep, request.max_evaluations, controls
            )
        mode = "inpaint" if keep is not None else "img2img" if init is not None else "generate"
        images = self._finish(x, asked, request.negative_prompt, options, mode)
        for image in images:
            image.info[METADATA_KEY].update(adapter_record(self.loras, adapters))
            if request.controls:
                image.info[METADATA_KEY]["controls"] = [spec.metadata() for spec in request.controls]
        return images

    def controls(self, specs: tuple[ControlSpec, ...], options: SamplingOptions) -> list:
        """The request's controls, branches loaded and maps made at the size the branches need."""
        if not specs:
            return []
        shape = self.latent.sample_shape((self.config.channels, options.height, options.width))
        folder = self.origin if self.origin is not None and self.origin.is_dir() else None
        return build_controls(tuple(specs), self.net, folder, tuple(shape[-2:]), self._branches)

    def generate(
        self,
        prompts: str | list[str],
        negative_prompt: str | None = None,
        *,
        callback: Callback | None = None,
        num_images: int = 1,
        **options: Any,
    ) -> list[Image.Image]:
        """Text to image: ``num_images`` per prompt, image i seeded ``seed + i``; ``options`` are the
        fields of ``SamplingOptions`` (steps, sampler, guidance, guidance_rescale, guidance_interval, …)."""
        request = GenerationRequest(prompts, negative_prompt, num_images, SamplingOptions(**options))
        return self.run(request, callback)

    def img2img(
        self,
        prompts: str | list[str],
        image: Image.Image | Tensor,
        strength: float = 0.6,
        negative_prompt: str | None = None,
        *,
        callback: Callback | None = None,
        num_images: int = 1,
        **options: Any,
    ) -> list[Image.Image]:
        """SDEdit (Meng et al. 2022): noise the image to the σ of ``strength`` and denoise from there.

        strength 0 returns the input; strength 1 ignores it (the same as ``generate``).
        """
        checked = SamplingOptions(strength=strength, **options)
        return self.run(
            GenerationRequest(prompts, negative_prompt, num_images, checked, init=image), callback
        )

    def inpaint(
        self,
        prompts: str | list[str],
        image: Image.Image | Tensor,
        mask: Image.Image | Tensor,
        negative_prompt: str | None = None,
        *,
        callback: Callback | None = None,
        num_images: int = 1,
        **options: Any,
    ) -> list[Image.Image]:
        """Repaint where ``mask`` is white (1); keep every other pixel of ``image`` exactly."""
        request = GenerationRequest(
            prompts, negative_prompt, num_images, SamplingOptions(**options), image, mask
        )
        return self.run(request, callback)

    # -- the engine ----------------------------------------------------------------------------

    def sample(
        self,
        prompts: list[str],
        negative_prompt: str | None = None,
        callback: Callback | None = None,
        init: Tensor | None = None,
        keep: Tensor | None = None,
        controls: tuple[ControlSpec, ...] = (),
        **options: Any,
    ) -> Tensor:
        """The images [B, C, H, W] in [-1, 1] before conversion to PIL; ``options`` as in ``generate``."""
        resolved = SamplingOptions(**options).resolve(self.config)
        prompts, negative_prompt, adapters = self._prompt_loras(list(prompts), negative_prompt)
        self._apply_adapters(adapters)
        made = self.controls(tuple(controls), resolved)
        with self.placement.context():
            return self._sample(prompts, negative_prompt, resolved, callback, init, keep, None, made)

    def upscale(
        self, prompts: list[str], low: Tensor, negative_prompt: str | None = None, **options: Any
    ) -> Tensor:
        """An upscaler's pictures [B, C, H, W] in [-1, 1] from given small ones [B, C, H/f, W/f] (one per
        prompt; e.g. real ones, to measure the upscaler alone); ``options`` as in ``generate``."""
        if not self.config.upscale_from:
            raise ValueError(f"{self.config.name} is not an upscaler: it has no upscale_from")
        resolved = SamplingOptions(**options).resolve(self.config)
        with self.placement.context():
            return self._sample(list(prompts), negative_prompt, resolved, None, None, None, low=low)

    def encode(self, prompts: list[str]) -> Conditioning | None:
        """The text encoder's Conditioning for ``prompts`` (None for an unconditional model)."""
        return encode_prompts(self.prompt_encoder, prompts)

    @property
    def prompt_encoder(self) -> nn.Module | None:
        """The text encoder prompts go through: a vocabulary steps aside while adapters are merged."""
        merged = self._adapters is not None and self._adapters.active
        return unwrap(self.text_encoder) if merged else self.text_encoder

    def heard(self, prompts: list[str]) -> list[tuple[str, float]]:
        """(caption, similarity) each prompt is encoded as (``text.vocabulary.heard_as``); as typed
        while adapters are merged or a prompt names one (``<lora:…>``)."""
        named = any(prompt_adapters(p)[1] for p in prompts)
        return heard_as(None if named else self.prompt_encoder, prompts)

    def encode_negative(self, negative: str | None) -> Conditioning:
        """Guidance's unconditional side: the negative prompt's Conditioning [1, …]; no negative prompt
        is zero embeddings for models that say so (SDXL, as diffusers and A1111 do), else ""."""
        cond = self.encode([negative or ""])
        if not negative and self.config.zero_empty_negative:
            cond = Conditioning(torch.zeros_like(cond.tokens), cond.mask, torch.zeros_like(cond.pooled))
        return cond

    def _sample(
        self,
        prompts: list[str],
        negative: str | None,
        options: SamplingOptions,
        callback: Callback | None,
        init: Tensor | None,
        keep: Tensor | None,
        max_evaluations: int | None = None,
        controls: list | None = None,
        low: Tensor | None = None,
    ) -> Tensor:
        """Pixels [B, C, H, W] from resolved options; init [B, C, H, W] and keep [B, 1, H, W] in pixels;
        run inside ``self.placement.context()``; ``low``: an upscaler's small pictures (else its base's)."""
        check_seed(options.seed, len(prompts))
        place = self.placement
        init, keep = (None if t is None else t.to(place.device, place.state_dtype) for t in (init, keep))
        shape = self.latent.sample_shape((self.config.channels, options.height, options.width))
        cond = self.encode(prompts)
        uncond = self.encode_negative(negative) if cond is not None and options.guidance != 1.0 else None
        seeds = range(options.seed, options.seed + len(prompts))
        start, latent_keep = init, None if keep is None else self._latent_mask(keep, shape)
        if self.config.upscale_from:  # the small pictures, enlarged, beside x (Ho et al. 2022)
            if low is None:
                low, callback = self._base_pictures(prompts, negative, options, callback, max_evaluations)
            else:
                f = self.upscale_factor
                small = (len(prompts), self.config.channels, options.height // f, options.width // f)
                low = enlarge(check_small(low, small).to(place.device, place.state_dtype), f)
            cond, uncond = (None if c is None else c.with_image(low) for c in (cond, uncond))
        if self.inpainting_net:  # told what to keep, the network repaints from pure noise by itself
            image = self._inpainting_inputs(len(prompts), shape, options, init, keep)  # [B, 5, h, w]
            cond, uncond = cond.with_image(image), None if uncond is None else uncond.with_image(image)
            start, latent_keep = (None if keep is not None else init), None  # img2img starts from init
        latent_init = None if start is None else self.latent.encode(start, options.tile)
        out = sample(
            self.denoiser, shape, options, seeds, cond, uncond,
            callback=self._pixel_steps(callback), init=latent_init, keep=latent_keep,
            max_evaluations=max_evaluations, controls=controls or (),
            device=self.placement.device, dtype=self.placement.state_dtype,
        )  # fmt: skip
        images = self.latent.decode(out, options.tile)
        if keep is not None and not self.latent.is_identity:  # the kept pixels exactly, not re-decoded
            images = keep * init + (1 - keep) * images
        return images.to(place.state_dtype)

    def _base_pictures(
        self,
        prompts: list[str],
        negative: str | None,
        options: SamplingOptions,
        callback: Callback | None,
        max_evaluations: int | None,
    ) -> tuple[Tensor, Callback | None]:
        """An upscaler's input: the base model's pictures [B, C, H, W] for the same prompts, seeds and
        options at 1/factor the size, enlarged; and the callback for the upscaler's own steps."""
        if self.base is None:
            raise ValueError("this upscaler has no base model: load it from a folder with base/")
        factor = self.upscale_factor
        small = dataclasses.replace(options, width=options.width // factor, height=options.height // factor)
        self.base.check_size(small)
        first, then = stage_callbacks(callback, factor)
        low = self.base._sample(prompts, negative, small, first, None, None, max_evaluations)
        return enlarge(low, factor), then

    @property
    def upscale_factor(self) -> int:
        """How many times larger an upscaler's pictures are than those it enlarges (1: not an upscaler)."""
        return self.config.image_size // self.config.upscale_from if self.config.upscale_from else 1

    @property
    def inpainting_net(self) -> bool:
        """Whether the network takes a mask and a masked image beside the latents (SD inpainting)."""
        return not self.config.upscale_from and int(getattr(self.net.config, "in_channels", 0)) > int(
            getattr(self.net.config, "outputs", 0) or 0
        )

    def _inpainting_inputs(
        self,
        batch: int,
        shape: tuple[int, ...],
        options: SamplingOptions,
        init: Tensor | None,
        keep: Tensor | None,
    ) -> Tensor:
        """[B, 1 + c, h, w]: where to paint (1) at the latent grid, and the latents of the image with that
        part blanked (Rombach et al. 2022's inpainting models); no mask: paint everything."""
        size = (options.height, options.width)
        if keep is None:
            device = self.placement.device
            keep = torch.zeros(batch, 1, *size, device=device)
            init = torch.zeros(batch, self.config.channels, *size, device=device) if init is None else init
        paint = 1 - keep  # [B, 1, H, W]
        masked = self.latent.encode(init * keep, options.tile)  # [B, c, h, w]
        return torch.cat([F.interpolate(paint, size=tuple(shape[1:])), masked], dim=1)

    def _pixel_steps(self, callback: Callback | None) -> Callback | None:
        """The callback seeing each step's x and x̂0 as images (a latent model's cheap linear preview:
        a full decode per step would cost more than the step)."""
        if callback is None or self.latent.is_identity:
            return callback
        preview = self.latent.preview
        return lambda s: callback(dataclasses.replace(s, x=preview(s.x), denoised=preview(s.denoised)))

    def _latent_mask(self, keep: Tensor, shape: tuple[int, ...]) -> Tensor:
        """keep [B, 1, H, W] in pixels → [B, 1, h, w]: a latent cell is kept only if all its pixels are."""
        if self.latent.is_identity:
            return keep
        return 1 - F.adaptive_max_pool2d(1 - keep, tuple(shape[1:]))

    def check_size(self, options: SamplingOptions) -> tuple[int, int]:
        """(width, height) of resolved options, checked against what the network can take."""
        multiple, (width, height) = self.size_multiple, (options.width, options.height)
        if width % multiple or height % multiple:
            message = f"width and height must be multiples of {multiple}, got {width}×{height}"
            raise OptionError("width", message)
        return width, height

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the network's down-sampling × the autoencoder's."""
        c = self.config
        factor = c.image_size // self.latent.sample_shape(c.image_shape)[-1]
        return factor * int(getattr(self.net.config, "downsampling", 1))

    def _finish(
        self, x: Tensor, prompts: list[str], negative: str | None, options: SamplingOptions, mode: str
    ) -> list[Image.Image]:
        """PIL images carrying their generation parameters in ``image.info[METADATA_KEY]``."""
        c = self.config
        recorded = options.metadata(keep_strength=mode == "img2img")
        extra = {"inpaint": True} if mode == "inpaint" else {}
        images = to_pil(x)
        for i, (image, prompt) in enumerate(zip(images, prompts)):
            image.info[METADATA_KEY] = {
                "prompt": prompt,
                "negative_prompt": negative,
                **recorded,
                "seed": options.seed + i,
                "size": [options.width, options.height],
                "model": path_field(self.source) if self.source else c.name,  # a name, never a path
                "weights": self.weights_hash,
                **extra,
            }
        return images
