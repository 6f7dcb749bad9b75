"""``noisecraft serve``: load the models, then run the app under uvicorn (imports happen on use)."""

from __future__ import annotations

import argparse

from ..cli_weights import add_lora_dir_flag, add_weights_flags, weights_options
from ..devices import add_device_arguments, placement_from_args


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text}")
    return value


LIMIT_FLAGS = {
    "queue_size": "requests waiting before a 429",
    "max_batch": "images per request",
    "max_steps": "sampler steps per request",
    "max_pixels": "output width × height (A1111 endpoints)",
    "max_prompt_chars": "characters per prompt",
    "max_request_pixels": "decoded pixels of one request's init images and mask together (413 beyond)",
    "max_decoding_pixels": "decoded pixels of all requests being admitted at once (429 beyond)",
}


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``serve`` on the ``noisecraft`` command's subparsers."""
    from .limits import Limits

    d = Limits()
    p = sub.add_parser("serve", help="HTTP API (A1111-compatible + streaming) and a web page")
    p.add_argument(
        "--model", dest="models", action="extend", nargs="+", default=[], metavar="NAME_OR_FOLDER",
        help="shipped model names, saved pipeline folders, Stable Diffusion diffusers folders or "
        ".safetensors files, loaded at start (default: every shipped model)",
    )  # fmt: skip
    add_weights_flags(p)  # for every Stable Diffusion model given
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)"
    )
    p.add_argument("--port", type=_port, default=7860, help="port (default: %(default)s, as A1111)")
    for field, meaning in LIMIT_FLAGS.items():
        flag = "--" + field.replace("_", "-")
        p.add_argument(
            flag, type=_positive_int, default=getattr(d, field), help=f"{meaning} (default: %(default)s)"
        )
    p.add_argument(
        "--api-auth", metavar="USER:PASS[,USER:PASS...]",
        help="HTTP Basic credentials required on every request (required with a --host other machines reach)",
    )  # fmt: skip
    p.add_argument(
        "--api-token", metavar="TOKEN", help="or: a token required as 'Authorization: Bearer TOKEN'"
    )
    p.add_argument(
        "--allowed-hosts", type=_names, default=(), metavar="NAME[,NAME...]",
        help="Host header names to answer besides --host and the loopback names ('*': any)",
    )  # fmt: skip
    p.add_argument(
        "--cors-allow-origins", type=_names, default=(), metavar="ORIGIN[,ORIGIN...]",
        help="origins (https://app.example) whose web pages may call the API (default: none)",
    )  # fmt: skip
    add_device_arguments(p)
    add_lora_dir_flag(p, " (listed at /sdapi/v1/loras)")
    p.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from .app import create_app
    from .guard import Access, check_exposure, parse_api_auth
    from .limits import Limits
    from .models import ModelRegistry

    placement = placement_from_args(args)
    users = parse_api_auth(args.api_auth) if args.api_auth else {}
    access = Access(users, args.api_token or None, args.allowed_hosts, args.cors_allow_origins)
    check_exposure(args.host, access)  # before loading models: a refusal comes at once
    limits = Limits(**{field: getattr(args, field) for field in LIMIT_FLAGS})
    weights = weights_options(args)
    lora_dir = args.lora_dir
    if args.models:
        models = ModelRegistry.load(args.models, lora_dir, **weights)
    else:
        models = ModelRegistry.shipped(lora_dir)
    for pipe in models.pipelines.values():
        pipe.to(placement)
    names = ", ".join(models.pipelines)
    print(f"noisecraft serve: {names} on {placement}, http://{args.host}:{args.port}/", flush=True)
    app = create_app(models, limits, access, args.host)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=5
    )
    _server_class()(config, app.state.noisecraft.worker).run()


def _server_class():
    import asyncio

    import uvicorn

    class Server(uvicorn.Server):
        """Ctrl+C first cancels the jobs, so open streams end now rather than after the grace period."""

        def __init__(self, config: uvicorn.Config, worker):
            super().__init__(config)
            self.worker, self.loop = worker, None

        async def startup(self, sockets=None) -> None:
            self.loop = asyncio.get_running_loop()
            await super().startup(sockets)

        def handle_exit(self, sig, frame) -> None:
            if self.loop is not None:  # a signal handler must not touch the queue's locks itself
                self.loop.call_soon_threadsafe(self.worker.cancel_all)
            super().handle_exit(sig, frame)

    return Server
