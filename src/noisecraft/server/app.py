"""The FastAPI application: routes, the web page, the worker's lifetime, and errors that stay 4xx.

app = create_app(ModelRegistry.load(["path/to/model"]), Limits(queue_size=8))
uvicorn.run(app, host="127.0.0.1", port=7860)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from . import a1111, a1111_info, native
from .admission import Admission
from .guard import Access, Guard
from .jobs import Worker
from .limits import Limits
from .models import ModelRegistry
from .state import ServerState

STATIC = Path(__file__).parent / "static"
# Swagger UI and ReDoc as the fastapi-offline package installs them (FastAPI's own pages use a CDN)
DOC_ASSETS = Path(str(files("fastapi_offline") / "static"))
REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
log = logging.getLogger("noisecraft.server")


def create_app(
    models: ModelRegistry, limits: Limits | None = None, access: Access | None = None, host: str = "127.0.0.1"
) -> FastAPI:
    """An app serving ``models`` on ``host`` to whom ``access`` admits; its worker thread starts and
    stops with the app's lifespan."""
    limits, access = limits or Limits(), access or Access()
    worker = Worker(limits.queue_size)
    admission = Admission(worker, limits.max_request_pixels, limits.max_decoding_pixels)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        yield
        worker.stop()
        admission.close()

    app = FastAPI(
        title="noisecraft",
        version=__version__,
        description="Text-to-image diffusion: an AUTOMATIC1111-compatible API and a native streaming API.",
        docs_url=None,  # FastAPI's Swagger UI and ReDoc load from a CDN; _add_docs serves them from here
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.noisecraft = ServerState(models, worker, limits, admission)
    app.include_router(a1111.router)
    app.include_router(a1111_info.router)
    app.include_router(native.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    app.add_middleware(Guard, access=access, bound_host=host)
    if access.cors_origins:  # outside the guard: a browser's preflight carries no credentials
        app.add_middleware(
            CORSMiddleware, allow_origins=list(access.cors_origins), allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"], allow_credentials="*" not in access.cors_origins,
        )  # fmt: skip

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.ico")

    _add_docs(app)
    return app


def _add_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) over ``/openapi.json``, every asset served here."""
    title = f"{app.title} API"

    @app.get("/docs-assets/redoc.standalone.js", include_in_schema=False)
    async def redoc_js() -> Response:
        return Response(_redoc_bundle(), media_type="text/javascript")

    app.mount("/docs-assets", StaticFiles(directory=DOC_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=title,
            swagger_js_url="/docs-assets/swagger-ui-bundle.js", swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/favicon.ico", swagger_ui_parameters={"validatorUrl": None},
        )  # fmt: skip

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json", title=title,
            redoc_js_url="/docs-assets/redoc.standalone.js", redoc_favicon_url="/favicon.ico",
            with_google_fonts=False,
        )  # fmt: skip


@functools.cache
def _redoc_bundle() -> bytes:
    """ReDoc's script with its one outside fetch, the Redocly logo from a CDN, pointed at our icon."""
    return (DOC_ASSETS / "redoc.standalone.js").read_bytes().replace(REDOC_LOGO, b"/favicon.ico")


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 with the field named in each message, without echoing the input (maybe 10 MB)."""
    detail = []
    for error in exc.errors():
        loc = [part for part in error.get("loc", ()) if isinstance(part, str | int)]
        field = ".".join(map(str, loc[1:])) or ".".join(map(str, loc)) or "body"
        detail.append(
            {"loc": loc, "msg": f"{field}: {error.get('msg', 'invalid')}", "type": error.get("type", "")}
        )
    return JSONResponse({"detail": detail}, status_code=422)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)


class BodyLimit:
    """413 for a request body over ``limit`` bytes, by its Content-Length or while it streams in."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            response = JSONResponse({"detail": self.message}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # FastAPI re-raises an HTTPException from reading the body as is
                raise HTTPException(413, self.message)
            return message

        await self.app(scope, counted, send)

    @property
    def message(self) -> str:
        return f"request body larger than {self.limit} bytes"
