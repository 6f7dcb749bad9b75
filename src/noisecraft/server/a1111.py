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
from ..images import METADATA_KEY, from_pil, to_pil
from ..infotext import infotext
from ..model import SamplingOptions
from ..pipeline import GenerationRequest, Pipeline
from ..samplers import SAMPLERS
from ..samplers.names import A1111_SAMPLERS, sampler_label
from . import state as st
from .control import a1111_units, check_controls, control_specs, open_maps
from .imaging import encode_png, fit_output, model_mask, png_text
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
    """Only the model options are real; the current model is the one the caller's requests use by default."""
    state = st.get_state(request)
    name = state.default_model(st.caller(request))
    weights = state.models.pipelines[name].weights_hash
    return {"sd_model_checkpoint": state.models.title(name), "sd_checkpoint_hash": weights}


@router.post("/options")
async def set_options(options: dict[str, Any], request: Request) -> dict[str, Any]:
    """``sd_model_checkpoint`` switches the caller's default model (its user's under --api-auth; one
    shared by every caller without credentials); every other option is ignored."""
    state = st.get_state(request)
    if "sd_model_checkpoint" in options:
        name = options["sd_model_checkpoint"]
        if not isinstance(name, str):
            raise st.reject("sd_model_checkpoint", "expected a model title or name")
        state.defaults[st.caller(request)] = st.resolve_model(state, name, "sd_model_checkpoint")
    return {}


@router.get("/scripts")
async def scripts() -> dict[str, list[str]]:
    """No scripts or extensions: clients probe this to learn which ones they may use."""
    return {"txt2img": [], "img2img": []}


@router.get("/progress", response_model=A1111Progress)
async def progress(
    request: Request, skip_current_image: bool = False, id_task: str | None = None
) -> A1111Progress:
    """The running job: fraction done, seconds left, and — for its own client only (``id_task`` = its
    ``force_task_id``, or the user who sent it) — the predicted clean image x̂0 so far and its id."""
    worker = st.get_state(request).worker
    running = worker.running()
    if running is None:
        return A1111Progress(
            progress=0.0, eta_relative=0.0, state=A1111ProgressState(job_count=worker.queued())
        )
    job, fraction = running.job, running.fraction()
    elapsed = time.monotonic() - running.started
    denoised, own = running.denoised, st.owns(request, job, id_task)
    image = None
    if own and not skip_current_image and denoised is not None:
        image = encode_png(to_pil(denoised[:1])[0])
    state = A1111ProgressState(
        interrupted=job.interrupted.is_set(),
        job=f"job {job.id}" if own else "",
        job_count=1 + worker.queued(),
        job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(time.time() - elapsed)),
        job_no=running.batch,
        sampling_step=running.step,
        sampling_steps=running.total or job.steps,
    )
    eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
    return A1111Progress(
        progress=fraction, eta_relative=eta, state=state, current_image=image,
        current_task=job.id if own else None,
    )  # fmt: skip


@router.post("/interrupt")
async def interrupt(request: Request, id_task: str | None = None) -> dict[str, Any]:
    """Stop the running job if it is the caller's (as for /progress); it answers with the images it
    has (its current batch as x̂0). Another client's job runs on."""
    st.get_state(request).worker.interrupt(lambda job: st.owns(request, job, id_task))
    return {}


# -- translation ---------------------------------------------------------------------------------


async def _serve(body: A1111Txt2Img, request: Request) -> dict[str, Any]:
    """Check, queue, wait; the client leaving cancels the job."""
    job = await _job(body, st.get_state(request), request)
    async for kind, data in job_events(job, request):
        if kind == "done":
            return data
        if kind == "error":
            raise HTTPException(data["status"], data["detail"])
    raise HTTPException(503, "the request was cancelled")  # only a departed client or a shutdown get here


# A1111's names for our options: a bad value is a 422 on the field the client sent.
A1111_FIELDS = {"guidance": "cfg_scale", "sampler": "sampler_name", "schedule": "scheduler"}
A1111_FIELDS["strength"] = "denoising_strength"


async def _job(body: A1111Txt2Img, state: st.ServerState, request: Request) -> Job:
    """The Pipeline requests (one per n_iter) and the response builder for one request, queued."""
    limits = state.limits
    texts = {"prompt": body.prompt, "negative_prompt": body.negative_prompt}
    if body.script_name:
        raise st.reject("script_name", f"no script {body.script_name!r}: this server has no scripts")
    units = a1111_units(body.alwayson_scripts) if body.alwayson_scripts else []
    checkpoint = (body.override_settings or {}).get("sd_model_checkpoint")
    checkpoint = checkpoint or state.default_model(st.caller(request))
    name, pipe = state.models.get(st.resolve_model(state, checkpoint, "override_settings"))
    img2img = isinstance(body, A1111Img2Img)
    values = dict(steps=body.steps, sampler=(body.sampler_name or body.sampler_index or "").strip() or None)
    values.update(guidance=body.cfg_scale, seed=body.seed)
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
    opened = await _open_images(body, state) if img2img else {}
    maps = await open_maps(state, units) if units else []
    async with state.admission.admit(
        [i for images in opened.values() for i in images] + maps, st.caller(request)
    ) as submit:
        init, mask = await state.admission.run(_decode_images, body, opened, pipe.config.channels, size)
        c = await state.admission.run(control_specs, units, maps)  # the controls
        check_controls(pipe, c, options, "alwayson_scripts")
        negative, count, most = body.negative_prompt or None, body.batch_size, limits.max_evaluations
        batches = [
            partial(pipe.run, GenerationRequest(body.prompt, negative, count, seeded, init, mask, most, c))
            for seeded in (replace(options, seed=options.seed + k * count) for k in range(body.n_iter))
        ]
        if units:  # a queued job keeps no megabytes of base64
            body = body.model_copy(update={"alwayson_scripts": {}})
        if img2img and not body.include_init_images:  # a queued job keeps no megabytes of base64
            body = body.model_copy(update={"init_images": [], "mask": None})
        finish = partial(_response, body, name, pipe, options, (width, height))
        job = Job(batches, finish, options.steps, task_id=body.force_task_id)
        submit(job)
    return job


def _response(body, name: str, pipe: Pipeline, options: SamplingOptions, size, images, interrupted):
    """A1111's answer: PNGs stretched to width×height carrying their infotext, the request, and info."""
    width, height = size
    controls = images[0].info.get(METADATA_KEY, {}).get("controls") if images else None
    info = _info(body, name, pipe, options, len(images), size, interrupted, controls)
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


async def _open_images(body: A1111Img2Img, state: st.ServerState) -> dict[str, list[Image.Image]]:
    """init_images and the mask with their headers read, not decoded yet."""
    if len(body.init_images) not in (1, body.batch_size):
        raise st.reject(
            "init_images", f"pass 1 or batch_size ({body.batch_size}) images, not {len(body.init_images)}"
        )
    return await st.open_images(
        state, {"init_images": body.init_images, "mask": [body.mask] if body.mask else []}
    )


def _decode_images(
    body: A1111Img2Img, opened: dict[str, list[Image.Image]], channels: int, size: tuple[int, int]
) -> tuple[torch.Tensor | None, Image.Image | None]:
    """init_images as one [B, C, H, W] tensor at the model's size (B = 1 or batch_size); the mask.
    One image is decoded at a time, and only its model-size copy is kept."""
    if not opened:
        return None, None
    init = torch.stack(
        [
            st.converted(i, "init_images", partial(from_pil, channels=channels, size=size))
            for i in opened["init_images"]
        ]
    )  # [B, C, H, W]
    invert = body.inpainting_mask_invert == 1
    mask = [st.converted(i, "mask", partial(model_mask, size=size, invert=invert)) for i in opened["mask"]]
    return init, (mask[0] if mask else None)


def _info(
    body, name: str, pipe: Pipeline, options: SamplingOptions, count: int, size, interrupted, controls=None
) -> dict:
    """A1111's ``info``: the settings and seeds each image was made with, and one infotext per image
    (with a ``ControlNet N`` field per control, as the sd-webui-controlnet extension writes)."""
    width, height = size
    sampler, seed, steps = options.sampler, options.seed, options.steps
    seeds = [seed + i for i in range(count)]
    native = pipe.config.image_size
    strength = body.denoising_strength if isinstance(body, A1111Img2Img) and not body.mask else None
    extra = {"Native size": f"{native}x{native}", "noisecraft sampler": sampler}
    if interrupted:
        extra["Interrupted"] = True
    label, model_hash = sampler_label(sampler), pipe.weights_hash[:10]
    texts = {"prompt": body.prompt, "negative_prompt": body.negative_prompt}
    recorded = {**texts, **options.metadata(keep_strength=strength is not None), "weights": pipe.weights_hash}
    recorded["controls"] = controls or []
    infotexts = [
        infotext({**recorded, "seed": s}, name, size, {"Native size": extra["Native size"]}) for s in seeds
    ]
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
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": f"noisecraft {__version__}",
    }
