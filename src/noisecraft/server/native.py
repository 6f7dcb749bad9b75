"""The native API (``/v1``): generation as Server-Sent Events, one per sampler step, then the images.

    POST /v1/generate  {"prompt": "a red circle", "steps": 20, "seed": 7}

    event: queued   data: {"job": "…", "position": 1}
    event: step     data: {"index": 0, "total": 20, "sigma": 80.0, "sigma_next": 57.3, "preview": "data:…"}
    …
    event: done     data: {"images": [{"image": "data:image/png;base64,…", "media_type": "image/png",
                                           "seed": 7, "parameters": {…}}], "heard": ["a red circle"], …}

``heard`` is what each prompt was encoded as: the prompt itself, or for a model with a vocabulary
(``text.VocabularyTextEncoder``) the caption it matched.

A sound model's outputs also carry ``"audio": "data:audio/wav;base64,…"`` with ``media_type``
"audio/wav"; their ``image`` is the clip's spectrogram picture, and the step previews are coloured
spectrograms.

A request that fails its checks, or finds the queue full, gets a plain JSON 422 / 429 before any
event; a failure while sampling arrives as ``event: error`` with ``status`` and ``detail``.
sse-starlette frames the events, sends a ``: ping`` comment every ``PING_SECONDS`` and stops the
stream when the client leaves, which cancels the job.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from PIL import Image
from sse_starlette import EventSourceResponse

from ..images import METADATA_KEY, from_pil
from ..model import own_control
from ..model.schedule import schedules_for
from ..pipeline import GenerationRequest
from ..samplers import SAMPLERS
from ..sound_files import colourise
from . import state as st
from .control import check_controls, control_specs, native_units, open_maps
from .imaging import encode_output, model_mask
from .jobs import Job, events_until_end
from .schemas import GenerateRequest, ModelInfo, ServerStatus

router = APIRouter(prefix="/v1", tags=["native"])
PING_SECONDS = 2.0  # a comment line this often keeps proxies from closing a quiet stream

SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: queued, step…, done (or error)",
        "content": {"text/event-stream": {}},
    }
}


@router.post("/generate", response_class=EventSourceResponse, responses=SSE_RESPONSES)
async def generate(body: GenerateRequest, request: Request) -> EventSourceResponse:
    """Generate, streaming one event per step with σ and a preview of the predicted clean image."""
    job, position = await _job(body, st.get_state(request), request)
    return EventSourceResponse(_stream(job, position), ping=PING_SECONDS, sep="\n")


@router.get("/models", response_model=list[ModelInfo])
async def models(request: Request) -> list[ModelInfo]:
    """The models this server holds; ``default`` is the one a request without ``model`` gets."""
    registry = st.get_state(request).models
    out = []
    for name, pipe in registry.pipelines.items():
        c = pipe.config
        out.append(
            ModelInfo(
                name=name, image_size=c.image_size, channels=c.channels, steps=c.steps, sampler=c.sampler,
                schedule=c.schedule, schedules=schedules_for(hasattr(pipe.denoiser, "sigma_table")),
                guidance=c.guidance, sigma_max=c.sigma_max, weights=pipe.weights_hash,
                default=name == registry.default,
                text_conditioned=pipe.text_encoder is not None, control=own_control(pipe.origin) is not None,
                modality=c.modality, sample_rate=c.audio.sample_rate if c.audio is not None else None,
            )
        )  # fmt: skip
    return out


@router.get("/samplers", response_model=list[str])
async def samplers() -> list[str]:
    return list(SAMPLERS)


@router.get("/status", response_model=ServerStatus)
async def status(request: Request) -> ServerStatus:
    """The queue and what the worker has done since the server started."""
    state = st.get_state(request)
    worker = state.worker
    limits = {
        k: getattr(state.limits, k) for k in ("queue_size", "max_batch", "max_steps", "max_prompt_chars")
    }
    return ServerStatus(
        queued=worker.queued(), running=worker.running() is not None, limits=limits, **worker.counts()
    )


async def _job(body: GenerateRequest, state: st.ServerState, request: Request) -> tuple[Job, int]:
    """The request's job, queued, and its place in the queue."""
    limits = state.limits
    texts = {"prompt": body.prompt, "negative_prompt": body.negative_prompt}
    name, pipe = state.models.get(st.resolve_model(state, body.model, "model"))
    options = st.sampling_options(body.model_dump())  # seed -1 is drawn here
    resolved = options.resolve(pipe.config)
    st.checked(lambda: pipe.check_size(resolved))
    if resolved.width * resolved.height > limits.max_pixels:
        raise st.reject(
            "width", f"{resolved.width}×{resolved.height} is more than {limits.max_pixels} pixels"
        )
    steps = resolved.steps
    st.check_common(limits, texts, steps, body.num_images, "num_images")
    size = (resolved.width, resolved.height)
    sent = {"init_image": body.init_image, "mask": body.mask}
    opened = await st.open_images(state, {k: [v] for k, v in sent.items() if v is not None})
    units = native_units([c.model_dump() for c in body.controls])
    maps = await open_maps(state, units) if units else []
    async with state.admission.admit([i for (i,) in opened.values()] + maps, st.caller(request)) as submit:
        init, mask = await state.admission.run(_decode, opened, pipe.config.channels, size)
        controls = await state.admission.run(control_specs, units, maps)
        check_controls(pipe, controls, options, "controls")
        job = st.checked(
            lambda: GenerationRequest(
                body.prompt,
                body.negative_prompt,
                body.num_images,
                options,
                init,
                mask,
                limits.max_evaluations,
                controls,
            ),
            {"init": "init_image"},
        )
        return _queued(job, pipe, name, options, steps, submit)


def _decode(opened: dict[str, list[Image.Image]], channels: int, size: tuple[int, int]) -> tuple:
    """The init image as [C, H, W] and the mask, at ``size`` (on the admission's decoding thread)."""
    init = [
        st.converted(i, "init_image", partial(from_pil, channels=channels, size=size))
        for i in opened.get("init_image", [])
    ]
    mask = [st.converted(i, "mask", partial(model_mask, size=size)) for i in opened.get("mask", [])]
    return (init[0] if init else None), (mask[0] if mask else None)


def _queued(job: GenerationRequest, pipe, name: str, options, steps: int, submit) -> tuple[Job, int]:
    """Queue the Pipeline call of ``job``; the Job and its position."""

    audio = pipe.config.audio

    def finish(images: list[Image.Image], interrupted: bool) -> dict[str, Any]:
        prompts = [job.prompts] if isinstance(job.prompts, str) else list(job.prompts)
        return {
            "model": name,
            "seed": options.seed,
            "interrupted": interrupted,
            "heard": [caption for caption, _ in pipe.heard(prompts)],  # a vocabulary's captions
            "images": [
                {
                    **encode_output(image, options.seed + i, audio),
                    "seed": options.seed + i,
                    "parameters": image.info.get(METADATA_KEY),
                }
                for i, image in enumerate(images)
            ],
        }

    paint = colourise if audio is not None else None  # a sound model's previews: coloured spectrograms
    queued = Job([partial(pipe.run, job)], finish, steps, previews=True, paint=paint)
    return queued, submit(queued)


async def _stream(job: Job, position: int) -> AsyncIterator[dict[str, str]]:
    """The job's events as sse-starlette fields (framed with the response's line separator)."""
    yield {"event": "queued", "data": json.dumps({"job": job.id, "position": position})}
    async for kind, data in events_until_end(job):
        yield {"event": kind, "data": json.dumps(data)}
