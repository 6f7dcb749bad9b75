"""What every route shares: the server's models, worker and limits, and how requests are refused."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from ..model import OptionError, SamplingOptions
from .imaging import BadImage, decode_image
from .jobs import Job, QueueFull, Worker
from .limits import Limits
from .models import ModelRegistry, UnknownModel

T = TypeVar("T")


@dataclass
class ServerState:
    models: ModelRegistry
    worker: Worker
    limits: Limits


def get_state(request: Request) -> ServerState:
    return request.app.state.noisecraft


def reject(field: str, message: str, status: int = 422) -> HTTPException:
    """An error in FastAPI's validation format, naming the field in ``loc`` and in the message."""
    return HTTPException(
        status, [{"loc": ["body", field], "msg": f"{field}: {message}", "type": "value_error"}]
    )


def checked(build: Callable[[], T], fields: dict[str, str] | None = None) -> T:
    """``build()``, its OptionError turned into a 422 naming the request's own field (``fields`` maps
    option names to an API's names, e.g. guidance → cfg_scale)."""
    try:
        return build()
    except OptionError as err:
        field = (fields or {}).get(err.field, err.field)
        raise reject(field, str(err).removeprefix(f"{err.field}: ")) from None


def sampling_options(values: dict[str, Any], fields: dict[str, str] | None = None) -> SamplingOptions:
    """The request's sampling options (the entries of ``values`` named after one), checked once."""
    return checked(lambda: SamplingOptions.pick(values), fields)


def resolve_model(state: ServerState, name: str | None, field: str) -> str:
    try:
        return state.models.resolve(name)
    except UnknownModel as err:
        raise reject(field, str(err)) from None


def check_common(
    limits: Limits, texts: dict[str, str | None], steps: int | None, images: int, field: str
) -> None:
    """The caps every generating request obeys: prompt lengths, steps, images per request."""
    for name, text in texts.items():
        if text is None:
            continue
        if len(text) > limits.max_prompt_chars:
            raise reject(name, f"{len(text)} characters; at most {limits.max_prompt_chars}")
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # JSON may carry lone surrogates ("\ud800"), which UTF-8 cannot
                raise reject(name, "not valid Unicode (a lone surrogate)") from None
    if steps is not None and steps > limits.max_steps:
        raise reject("steps", f"{steps} steps; at most {limits.max_steps}")
    if images > limits.max_batch:
        raise reject(field, f"{images} images in one request; at most {limits.max_batch}")


async def decode(data: str, field: str, limits: Limits):
    """Decode a base64 image off the event loop; a 422 naming the field when it is unusable."""
    try:
        return await run_in_threadpool(decode_image, data, field, limits.max_image_pixels)
    except BadImage as err:
        raise reject(field, str(err).removeprefix(f"{field}: ")) from None


def submit(state: ServerState, job: Job) -> int:
    """Queue the job; 429 with Retry-After when the queue is full."""
    try:
        return state.worker.submit(job)
    except QueueFull as err:
        raise HTTPException(429, str(err), headers={"Retry-After": str(err.retry_after)}) from None
