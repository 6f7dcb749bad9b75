"""The AUTOMATIC1111 web UI API (``/sdapi/v1``), translated into Pipeline calls.

Our models draw one fixed size (``pipeline.config.image_size``). A1111 clients send width and
height (webuiapi: 512 unless told otherwise), so the image is drawn at the model's size and then
stretched to width×height; ``info`` reports both.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from functools import partial
from typing import Any

import torch
from fastapi import APIRouter, HTTPException, Request
from PIL import Image

from .. import __version__
from ..images import from_pil, to_pil
from ..model import SamplingOptions
from ..model.schedule import schedule_label
from ..pipeline import GenerationRequest, Pipeline
from ..samplers import SAMPLERS
from ..samplers.names import A1111_SAMPLERS, sampler_label
from . import state as st
from .imaging import encode_png, fit_output, invert_mask, png_text
from .jobs import Job, job_events
from .schemas import (
    A1111Img2Img,
    A1111Model,
    A1111Progress,
    A1111ProgressState,
    A1111Response,
    A1111Sampler,
    A1111Txt2Img,
)

router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111-compatible"])


@router.post("/txt2img", response_model=A1111Response)
async def txt2img(body: A1111Txt2Img, request: Request) -> dict[str, Any]:
    """Text to image."""
    return await _serve(body, request)


@router.post("/img2img", response_model=A1111Response)
async def img2img(body: A1111Img2Img, request: Request) -> dict[str, Any]:
    """SDEdit from ``init_images`` at ``denoising_strength``; inpainting where ``mask`` is white."""
    return await _serve(body, request)


@router.get("/samplers", response_model=list[A1111Sampler])
async def samplers() -> list[dict[str, Any]]:
    out = []
    for name in SAMPLERS:
        label, aliases = A1111_SAMPLERS.get(name, (name, []))
        out.append({"name": label, "aliases": [name, *aliases] if label != name else aliases, "options": {}})
    return out


@router.get("/sd-models", response_model=list[A1111Model])
async def sd_models(request: Request) -> list[dict[str, Any]]:
    models = st.get_state(request).models
    return [
        {
            "title": models.title(name),
            "model_name": name,
            "hash": pipe.weights_hash[:10],
            "sha256": pipe.weights_hash,
            "filename": models.sources[name],
            "config": None,
        }
        for name, pipe in models.pipelines.items()
    ]


@router.get("/options")
async def get_options(request: Request) -> dict[str, Any]:
    """Only the model options are real; the current model is the one requests use by default."""
    models = st.get_state(request).models
    weights = models.pipelines[models.default].weights_hash
    return {"sd_model_checkpoint": models.title(models.default), "sd_checkpoint_hash": weights}


@router.post("/options")
async def set_options(options: dict[str, Any], request: Request) -> dict[str, Any]:
    """``sd_model_checkpoint`` switches the default model; every other option is ignored."""
    state = st.get_state(request)
    if "sd_model_checkpoint" in options:
        name = options["sd_model_checkpoint"]
        if not isinstance(name, str):
            raise st.reject("sd_model_checkpoint", "expected a model title or name")
        state.models.default = st.resolve_model(state, name, "sd_model_checkpoint")
    return {}


@router.get("/scripts")
async def scripts() -> dict[str, list[str]]:
    """No scripts or extensions: clients probe this to learn which ones they may use."""
    return {"txt2img": [], "img2img": []}


@router.get("/progress", response_model=A1111Progress)
async def progress(request: Request, skip_current_image: bool = False) -> A1111Progress:
    """The running job: fraction done, seconds left, and the predicted clean image x̂0 so far."""
    worker = st.get_state(request).worker
    running = worker.running()
    if running is None:
        return A1111Progress(
            progress=0.0, eta_relative=0.0, state=A1111ProgressState(job_count=worker.queued())
        )
    job, fraction = running.job, running.fraction()
    elapsed = time.monotonic() - running.started
    denoised = running.denoised
    image = None
    if not skip_current_image and denoised is not None:
        image = encode_png(to_pil(denoised[:1])[0])
    state = A1111ProgressState(
        interrupted=job.interrupted.is_set(),
        job=f"job {job.id}",
        job_count=1 + worker.queued(),
        job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(time.time() - elapsed)),
        job_no=running.batch,
        sampling_step=running.step,
        sampling_steps=running.total or job.steps,
    )
    eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
    return A1111Progress(
        progress=fraction, eta_relative=eta, state=state, current_image=image, current_task=job.id
    )


@router.post("/interrupt")
async def interrupt(request: Request) -> dict[str, Any]:
    """Stop the running job; it answers with the images it has (its current batch as x̂0)."""
    st.get_state(request).worker.interrupt()
    return {}


# -- translation ---------------------------------------------------------------------------------


async def _serve(body: A1111Txt2Img, request: Request) -> dict[str, Any]:
    """Check, queue, wait; the client leaving cancels the job."""
    state = st.get_state(request)
    job = await _job(body, state)
    st.submit(state, job)
    async for kind, data in job_events(job, request):
        if kind == "done":
            return data
        if kind == "error":
            raise HTTPException(data["status"], data["detail"])
    raise HTTPException(503, "the request was cancelled")  # only a departed client or a shutdown get here


# A1111's names for our options: a bad value is a 422 on the field the client sent.
A1111_FIELDS = {"guidance": "cfg_scale", "sampler": "sampler_name", "schedule": "scheduler"}
A1111_FIELDS["strength"] = "denoising_strength"


async def _job(body: A1111Txt2Img, state: st.ServerState) -> Job:
    """The Pipeline requests (one per n_iter) and the response builder for one request."""
    limits = state.limits
    texts = {"prompt": body.prompt, "negative_prompt": body.negative_prompt}
    if body.script_name:
        raise st.reject("script_name", f"no script {body.script_name!r}: this server has no scripts")
    if body.alwayson_scripts:
        raise st.reject("alwayson_scripts", f"no scripts here: {', '.join(map(str, body.alwayson_scripts))}")
    checkpoint = (body.override_settings or {}).get("sd_model_checkpoint")
    name, pipe = state.models.get(st.resolve_model(state, checkpoint, "override_settings"))
    img2img = isinstance(body, A1111Img2Img)
    values = dict(steps=body.steps, sampler=(body.sampler_name or body.sampler_index or "").strip() or None)
    values.update(guidance=body.cfg_scale, seed=st.pick_seed(body.seed))
    if body.scheduler and body.scheduler.lower() != "automatic":
        values["schedule"] = body.scheduler
    if img2img:  # A1111's default strength when a client sends null
        values["strength"] = 0.75 if body.denoising_strength is None else body.denoising_strength
    native = pipe.config.image_size
    width, height = body.width or native, body.height or native
    if width * height > limits.max_pixels:
        raise st.reject("width", f"{width}×{height} is more than {limits.max_pixels} pixels (width × height)")
    if not pipe.latent.is_identity:  # latent models draw at the asked size; ours draw theirs, stretched
        values.update(width=width, height=height)
    options = st.sampling_options(values, A1111_FIELDS).resolve(pipe.config)
    st.checked(lambda: pipe.check_size(options))
    field = "batch_size" if body.batch_size > limits.max_batch else "n_iter"
    st.check_common(limits, texts, options.steps, body.batch_size * body.n_iter, field)
    size = (options.width, options.height)
    init, mask = await _init_images(body, pipe, limits, size) if img2img else (None, None)
    negative, count = body.negative_prompt or None, body.batch_size
    batches = [
        partial(pipe.run, GenerationRequest(body.prompt, negative, count, seeded, init, mask))
        for seeded in (replace(options, seed=options.seed + k * count) for k in range(body.n_iter))
    ]
    finish = partial(_response, body, name, pipe, options, (width, height))
    return Job(batches, finish, options.steps)


def _response(body, name: str, pipe: Pipeline, options: SamplingOptions, size, images, interrupted):
    """A1111's answer: PNGs stretched to width×height carrying their infotext, the request, and info."""
    width, height = size
    info = _info(body, name, pipe, options, len(images), size, interrupted)
    encoded = [
        encode_png(fit_output(image, width, height), png_text(image, text))
        for image, text in zip(images, info["infotexts"])
    ]
    parameters = body.model_dump()
    if isinstance(body, A1111Img2Img):
        if body.include_init_images:
            encoded += [
                data.partition(",")[2] if data.startswith("data:") else data for data in body.init_images
            ]
        else:
            parameters.update(init_images=None, mask=None)  # as A1111 does: do not echo megabytes back
    return {"images": encoded if body.send_images else [], "parameters": parameters, "info": json.dumps(info)}


async def _init_images(
    body: A1111Img2Img, pipe: Pipeline, limits, size: tuple[int, int]
) -> tuple[torch.Tensor, Image.Image | None]:
    """init_images as one [B, C, H, W] tensor at the model's size (B = 1 or batch_size); the mask."""
    if len(body.init_images) not in (1, body.batch_size):
        raise st.reject(
            "init_images", f"pass 1 or batch_size ({body.batch_size}) images, not {len(body.init_images)}"
        )
    c = pipe.config
    images = [await st.decode(data, "init_images", limits) for data in body.init_images]
    init = torch.stack([from_pil(image, c.channels, size) for image in images])  # [B, C, H, W]
    mask = None
    if body.mask:
        mask = await st.decode(body.mask, "mask", limits)  # any size: the pipeline fits it to the model
        mask = invert_mask(mask) if body.inpainting_mask_invert == 1 else mask
    return init, mask


def _info(body, name: str, pipe: Pipeline, options: SamplingOptions, count: int, size, interrupted) -> dict:
    """A1111's ``info``: the settings and seeds each image was made with, and one infotext per image."""
    width, height = size
    sampler, seed, steps = options.sampler, options.seed, options.steps
    seeds = [seed + i for i in range(count)]
    native = pipe.config.image_size
    strength = body.denoising_strength if isinstance(body, A1111Img2Img) and not body.mask else None
    extra = {"Native size": f"{native}x{native}", "noisecraft sampler": sampler}
    if interrupted:
        extra["Interrupted"] = True
    label, model_hash = sampler_label(sampler), pipe.weights_hash[:10]

    def infotext(s: int) -> str:
        fields = [
            f"Steps: {steps}", f"Sampler: {label}", f"Schedule type: {schedule_label(options.schedule)}",
            f"CFG scale: {body.cfg_scale}",
            f"Seed: {s}", f"Size: {width}x{height}", f"Model hash: {model_hash}", f"Model: {name}",
        ] + ([f"Denoising strength: {strength}"] if strength is not None else []) + [
            f"Native size: {native}x{native}", f"Version: noisecraft {__version__}",
        ]  # fmt: skip
        negative = f"\nNegative prompt: {body.negative_prompt}" if body.negative_prompt else ""
        return f"{body.prompt}{negative}\n{', '.join(fields)}"

    count = len(seeds)
    return {
        "prompt": body.prompt,
        "all_prompts": [body.prompt] * count,
        "negative_prompt": body.negative_prompt,
        "all_negative_prompts": [body.negative_prompt] * count,
        "seed": seed,
        "all_seeds": seeds,
        "subseed": seed,
        "all_subseeds": seeds,
        "subseed_strength": 0,
        "width": width,
        "height": height,
        "sampler_name": label,
        "cfg_scale": body.cfg_scale,
        "steps": steps,
        "batch_size": body.batch_size,
        "restore_faces": False,
        "sd_model_name": name,
        "sd_model_hash": model_hash,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": strength,
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": [infotext(s) for s in seeds],
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": f"noisecraft {__version__}",
    }
