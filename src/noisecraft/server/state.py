"""What every route shares: the server's models, worker and limits, and how requests are refused."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from PIL import Image
from starlette.concurrency import run_in_threadpool

from ..model import OptionError, SamplingOptions
from .admission import Admission
from .imaging import BadImage, load_image, open_image
from .jobs import Job, Worker
from .limits import Limits
from .models import ModelRegistry, UnknownModel

T = TypeVar("T")


@dataclass
class ServerState:
    models: ModelRegistry
    worker: Worker
    limits: Limits
    admission: Admission
    defaults: dict[str | None, str] = field(default_factory=dict)  # caller → model (POST /options)

    def default_model(self, caller: str | None) -> str:
        """The model a caller's A1111 requests get without one: its own choice, else the server's."""
        return self.defaults.get(caller, self.models.default)


def get_state(request: Request) -> ServerState:
    return request.app.state.noisecraft


def caller(request: Request) -> str | None:
    """The authenticated user who sent ``request`` (``Guard`` sets it); None without credentials."""
    return getattr(request.state, "caller", None)


def owns(request: Request, job: Job, id_task: str | None) -> bool:
    """Whether the caller may see or stop ``job``: it names the job's id, or is the user who sent it."""
    if id_task is not None and secrets.compare_digest(id_task.encode(), job.id.encode()):
        return True
    user = caller(request)
    return user is not None and user == job.owner


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


def bad_image(err: BadImage, field: str) -> HTTPException:
    return reject(field, str(err).removeprefix(f"{field}: "))


async def open_images(state: ServerState, images: dict[str, list[str]]) -> dict[str, list[Image.Image]]:
    """Each field's base64 images with their headers read (pixels not decoded), off the event loop;
    a 422 naming the field for one that is unusable or over ``max_image_pixels``."""

    def open_all() -> dict[str, list[Image.Image]]:
        limit = state.limits.max_image_pixels
        opened: dict[str, list[Image.Image]] = {}
        for field_name, items in images.items():
            try:
                opened[field_name] = [open_image(data, field_name, limit) for data in items]
            except BadImage as err:
                raise bad_image(err, field_name) from None
        return opened

    return await run_in_threadpool(open_all)


def converted(image: Image.Image, field: str, convert: Callable[[Image.Image], T]) -> T:
    """``convert`` of the decoded image, whose pixels are freed right after; a 422 naming the field
    when they are broken. Call on the admission's decoding thread."""
    try:
        return convert(load_image(image, field))
    except BadImage as err:
        raise bad_image(err, field) from None
    finally:
        image.close()
