"""What one request may cost, on a real server on loopback: decoded pixels (413 for a request's
images, 429 while others decode), images decoded only once the request holds a queue slot, and
network evaluations per sampler call whatever the sampler (ode_adaptive included)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from types import SimpleNamespace

import httpx
import pytest
import torch
from conftest import make_tiny_pipeline
from fastapi import HTTPException
from PIL import Image
from server_helpers import png_b64, serve, sse_events, wait_until

from noisecraft.model import SamplingOptions
from noisecraft.model.sampling import EvaluationLimit, sample
from noisecraft.samplers import SAMPLERS
from noisecraft.server.admission import Admission
from noisecraft.server.app import create_app
from noisecraft.server.jobs import Worker
from noisecraft.server.limits import Limits
from noisecraft.server.models import ModelRegistry

SIDE = 64  # test images: the limits below are scaled to them
LIMITS = Limits(
    queue_size=1, max_steps=2000, max_image_pixels=SIDE * SIDE, max_request_pixels=2 * SIDE * SIDE,
    max_decoding_pixels=3 * SIDE * SIDE,
)  # fmt: skip
SMALL = {"prompt": "x", "steps": 1, "width": 8, "height": 8}


@pytest.fixture(scope="module")
def url():
    with serve(create_app(ModelRegistry({"tiny": make_tiny_pipeline()}), LIMITS)) as base:
        yield base


def _image(side: int = SIDE) -> str:
    return png_b64(Image.new("RGB", (side, side), "red"))


def _broken_pixels() -> str:
    """A PNG whose header is fine (SIDE² pixels) and whose pixel data is cut off: only decoding finds out."""
    raw = base64.b64decode(_image())
    return base64.b64encode(raw[: len(raw) - 30]).decode()


def test_a_request_over_its_pixel_budget_is_413_before_decoding(url):
    three = {**SMALL, "init_images": [_image()] * 3, "batch_size": 3}
    response = httpx.post(f"{url}/sdapi/v1/img2img", json=three, timeout=30)
    assert response.status_code == 413 and str(2 * SIDE * SIDE) in response.json()["detail"]
    masked = {**SMALL, "init_images": [_image()] * 2, "batch_size": 2, "mask": _image()}
    assert httpx.post(f"{url}/sdapi/v1/img2img", json=masked, timeout=30).status_code == 413
    within = {**SMALL, "init_images": [_image()], "mask": _image()}
    assert httpx.post(f"{url}/sdapi/v1/img2img", json=within, timeout=30).status_code == 200
    broken = {**SMALL, "init_images": [_broken_pixels()]}  # a free queue: decoded, and found broken
    response = httpx.post(f"{url}/sdapi/v1/img2img", json=broken, timeout=30)
    assert response.status_code == 422 and "init_images" in response.text


def test_images_are_decoded_only_inside_the_queues_admission(url):
    """With the queue full, an image whose pixels are broken is a 429: it was never decoded."""
    with httpx.Client(base_url=url, timeout=30) as client, contextlib.ExitStack() as stack:
        for expected in ("step", "queued"):  # one running, one waiting: the queue (1) is full
            stream = stack.enter_context(
                client.stream("POST", "/v1/generate", json={"prompt": "x", "steps": 2000})
            )
            events = sse_events(stream.iter_lines())
            kind = None
            while kind != expected:
                kind, _ = next(events)
            stack.callback(events.close)
        for path, body in (
            ("/sdapi/v1/img2img", {**SMALL, "init_images": [_broken_pixels()]}),
            ("/v1/generate", {**SMALL, "init_image": _broken_pixels()}),
        ):
            response = client.post(path, json=body)
            assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1, response.text
    with httpx.Client(base_url=url, timeout=30) as client:
        wait_until(lambda: client.get("/v1/status").json()["queued"] == 0, 10, "the queue to empty")


def test_admission_holds_the_pixels_and_the_slot_until_the_job_is_queued():
    async def scenario() -> None:
        worker = Worker(queue_size=4)  # not started: queued jobs stay queued
        admission = Admission(worker, max_request_pixels=100, max_decoding_pixels=150)
        image = Image.new("L", (10, 10))  # 100 pixels
        async with admission.admit([image]):
            with pytest.raises(HTTPException) as busy:
                async with admission.admit([image]):
                    pass
            assert busy.value.status_code == 429 and int(busy.value.headers["Retry-After"]) >= 1
            async with admission.admit([Image.new("L", (5, 10))]):  # 50 more pixels still fit
                assert admission.budget.used == 150
        assert admission.budget.used == 0 and worker._reserved == 0  # given back, no job queued
        with pytest.raises(HTTPException) as large:
            async with admission.admit([image, Image.new("L", (1, 1))]):
                pass
        assert large.value.status_code == 413 and worker._reserved == 0
        for _ in range(4):  # four slots taken by queued jobs: the fifth request is turned away
            async with admission.admit([]) as submit:
                submit(SimpleNamespace())  # type: ignore[arg-type]
        with pytest.raises(HTTPException) as full:
            async with admission.admit([]):
                pass
        assert full.value.status_code == 429 and admission.budget.used == 0
        admission.close()

    asyncio.run(scenario())


# -- network evaluations ---------------------------------------------------------------------------


def test_every_fixed_step_sampler_fits_two_evaluations_per_step_and_adaptive_stops_at_its_budget():
    pipe = make_tiny_pipeline()
    calls = []

    def counted(x, sigma, cond=None):
        calls.append(1)
        return pipe.denoiser(x, sigma, cond)

    cond = pipe.encode(["x"])
    for name in SAMPLERS:  # bounded: one run per sampler
        options = SamplingOptions(steps=5, sampler=name, guidance=1.0).resolve(pipe.config)
        calls.clear()
        if name == "ode_adaptive":
            with pytest.raises(EvaluationLimit, match="more than 10 network evaluations"):
                sample(counted, (3, 8, 8), options, [0], cond, max_evaluations=10)
            assert len(calls) == 10  # stopped at the budget, not after
        else:
            out = sample(counted, (3, 8, 8), options, [0], cond, max_evaluations=10)
            assert out.shape == (1, 3, 8, 8) and torch.isfinite(out).all() and len(calls) <= 10, name


def test_ode_adaptive_stops_at_the_servers_evaluation_budget():
    """steps 2 and guidance 100 made ode_adaptive take 100+ steps; 2 × max_steps evaluations bound it."""
    limits = Limits(max_steps=4, max_batch=8)  # 8 evaluations per sampler call
    with serve(create_app(ModelRegistry({"tiny": make_tiny_pipeline()}), limits)) as base:
        body = {"steps": 2, "sampler_name": "ode_adaptive", "cfg_scale": 100, "batch_size": 8, "width": 8}
        response = httpx.post(f"{base}/sdapi/v1/txt2img", json={**body, "height": 8}, timeout=60)
        assert response.status_code == 422 and "more than 8 network evaluations" in response.text
        native = {"prompt": "x", "steps": 2, "sampler": "ode_adaptive", "guidance": 100, "num_images": 8}
        with httpx.stream("POST", f"{base}/v1/generate", json=native, timeout=60) as stream:
            kind, data = list(sse_events(stream.iter_lines()))[-1]
        assert kind == "error" and data["status"] == 422 and "network evaluations" in data["detail"]
        heun = {"steps": 4, "sampler_name": "Heun", "width": 8, "height": 8}  # 7 evaluations: allowed
        assert httpx.post(f"{base}/sdapi/v1/txt2img", json=heun, timeout=60).status_code == 200
