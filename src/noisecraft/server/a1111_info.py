"""The AUTOMATIC1111 API's lists and lookups (``/sdapi/v1``) beyond generating: PNG info, schedulers,
autoencoders, LoRAs, command-line flags; and a 404 saying so for the endpoints with no meaning here."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..images import METADATA_KEY
from ..infotext import PARAMETERS_KEY, infotext, parse_infotext
from ..model.adapters import ADAPTER_SUFFIX, list_adapters
from ..model.schedule import SCHEDULES
from . import state as st
from .schemas import A1111PngInfo, A1111PngInfoRequest, A1111Scheduler, A1111Vae

router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111-compatible"])


@router.post("/png-info", response_model=A1111PngInfo)
async def png_info(body: A1111PngInfoRequest, request: Request) -> dict[str, Any]:
    """An image's parameters text (built from noisecraft's JSON if it has only that), its fields, and
    its other text chunks."""
    if not body.image.strip():
        return {"info": "", "items": {}, "parameters": {}}
    opened = await st.open_images(st.get_state(request), {"image": [body.image.strip()]})
    with opened["image"][0] as image:  # the header only: text chunks before the pixels, none decoded
        items = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
    info = items.pop(PARAMETERS_KEY, None)
    if info is None and METADATA_KEY in items:
        try:
            info = infotext(json.loads(items[METADATA_KEY]))
        except (ValueError, KeyError, TypeError, AttributeError):  # not metadata noisecraft wrote
            info = None
    return {"info": info or "", "items": items, "parameters": parse_infotext(info) if info else {}}


@router.get("/schedulers", response_model=list[A1111Scheduler])
async def schedulers(request: Request) -> list[dict[str, Any]]:
    """The σ spacings a request's ``scheduler`` may name ("Automatic": the model's own)."""
    rho = st.get_state(request).models.pipelines[st.get_state(request).models.default].config.rho
    out: list[dict[str, Any]] = [{"name": "automatic", "label": "Automatic", "aliases": None}]
    for name, s in SCHEDULES.items():
        own = s.default_rho if s.default_rho is not None else rho if s.uses_rho else -1
        aliases = list(s.aliases) or None
        out.append({"name": name, "label": s.label, "aliases": aliases, "default_rho": own,
                    "need_inner_model": s.uses_table})  # fmt: skip
    return out


@router.get("/sd-vae", response_model=list[A1111Vae])
async def sd_vae(request: Request) -> list[dict[str, str]]:
    """The autoencoders of the latent (Stable Diffusion) models held; pixel models have none."""
    models = st.get_state(request).models
    return [
        {"model_name": f"{name} autoencoder", "filename": f"{name}/autoencoder"}  # names, never paths
        for name, pipe in models.pipelines.items()
        if not pipe.latent.is_identity
    ]


@router.get("/loras")
async def loras(request: Request) -> list[dict[str, Any]]:
    """The LoRA files in ``--lora-dir`` that prompts may name as ``<lora:NAME:SCALE>`` (file names,
    never the server's paths)."""
    folder = st.get_state(request).models.lora_dir
    return [
        {"name": name, "alias": name, "path": f"{name}{ADAPTER_SUFFIX}", "metadata": {}}
        for name in list_adapters(folder)
    ]


@router.get("/cmd-flags")
async def cmd_flags(request: Request) -> dict[str, Any]:
    """What ``noisecraft serve`` was started with: its models (by name) and limits."""
    state = st.get_state(request)
    return {"model": list(state.models.pipelines), **dataclasses.asdict(state.limits)}


# A1111 endpoints with no meaning here (no upscalers, captioning, embeddings, training, ...).
UNSUPPORTED = {
    "GET": ["upscalers", "latent-upscale-modes", "hypernetworks", "face-restorers", "realesrgan-models",
            "prompt-styles", "embeddings", "memory", "script-info", "extensions"],
    "POST": ["interrogate", "extra-single-image", "extra-batch-images", "skip", "refresh-checkpoints",
             "refresh-vae", "refresh-loras", "unload-checkpoint", "reload-checkpoint", "create/embedding",
             "create/hypernetwork", "train/embedding", "train/hypernetwork"],
}  # fmt: skip


async def _unsupported(request: Request) -> JSONResponse:
    """404 in A1111's error shape (its api_middleware's ``handle_exception``)."""
    detail = f"{request.url.path} is not supported by noisecraft"
    body = {"error": "HTTPException", "detail": detail, "body": "", "errors": f"404: {detail}"}
    return JSONResponse(body, status_code=404)


for _method, _names in UNSUPPORTED.items():
    for _name in _names:
        router.add_api_route(f"/{_name}", _unsupported, methods=[_method], include_in_schema=False)
