"""The HTTP API on a tiny random model: a real A1111 client (webuiapi), the native SSE stream, limits,
the queue, cancellation, interrupt, model selection, failures that leave the server up, and `serve`."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import re
import threading
import time

import httpx
import numpy as np
import pytest
import webuiapi
from conftest import make_tiny_pipeline
from PIL import Image
from server_helpers import decode_png, pixels, png_b64, serve, sse_events, wait_until

from noisecraft.images import METADATA_KEY, from_pil, to_pil
from noisecraft.pipeline import Pipeline
from noisecraft.server.app import STATIC, create_app
from noisecraft.server.limits import Limits
from noisecraft.server.models import ModelRegistry

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n{} loop\n"  # Ghostscript would never end


def _encoded(image: Image.Image, kind: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    return base64.b64encode(buffer.getvalue()).decode()


LIMITS = Limits(queue_size=2, max_batch=4, max_steps=2000, max_pixels=1024 * 1024, max_prompt_chars=200)
LONG = 2000  # steps: ≈ 10 s for the tiny model, so a long job is still running when a test looks at it


def _broken() -> Pipeline:
    """A model whose network fails inside the sampler, as a bug or an exhausted resource would."""
    pipe = make_tiny_pipeline()

    def fail(x, sigma, cond=None):
        raise RuntimeError("boom")

    pipe.denoiser = fail
    return pipe


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return make_tiny_pipeline()


@pytest.fixture(scope="module")
def server(pipe):
    other = Pipeline(pipe.net, pipe.text_encoder, dataclasses.replace(pipe.config, name="tiny-b", steps=3))
    models = ModelRegistry({"tiny": pipe, "tiny-b": other, "broken": _broken()})
    with serve(create_app(models, LIMITS)) as url:
        yield url


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        wait_until(lambda: _idle(c), 15, "an idle server")  # long jobs of earlier tests are cancelled
        yield c


def _idle(c: httpx.Client) -> bool:
    status = c.get("/v1/status").json()
    return status["queued"] == 0 and not status["running"]


def _api(url: str, **kwargs) -> webuiapi.WebUIApi:
    host, port = url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), **kwargs)


def _native(image: Image.Image, size: int = 8) -> np.ndarray:
    """The model-size picture inside an output stretched by nearest neighbour (every k-th pixel)."""
    step = image.width // size
    return pixels(image)[step // 2 :: step, step // 2 :: step]


# -- a real A1111 client --------------------------------------------------------------------------


def test_webuiapi_txt2img_matches_the_pipeline(server, pipe, client):
    api = _api(server, sampler="Euler a", steps=5)
    result = api.txt2img(prompt="a red circle", negative_prompt="blue", seed=3, batch_size=2, cfg_scale=2.5)
    assert len(result.images) == 2 and result.images[0].size == (512, 512)  # webuiapi asks 512×512
    assert result.info["all_seeds"] == [3, 4] and result.info["width"] == 512
    assert result.info["sampler_name"] == "Euler a" and result.info["sd_model_name"] == "tiny"
    expected = pipe.generate(
        "a red circle",
        negative_prompt="blue",
        steps=5,
        sampler="euler_ancestral",
        guidance=2.5,
        seed=3,
        num_images=2,
    )
    for got, want in zip(result.images, expected):
        assert np.array_equal(_native(got), pixels(want))
    assert "Seed: 4" in result.images[1].info["parameters"]  # A1111's infotext in the PNG
    assert json.loads(result.images[1].info[METADATA_KEY])["seed"] == 4


def test_a1111_scheduler_chooses_the_sigma_spacing(pipe, client):
    body = {"prompt": "a red circle", "seed": 5, "steps": 4, "width": 8, "height": 8, "sampler_name": "Euler"}
    images = {}
    for scheduler in ("Karras", "Exponential"):
        answer = client.post("/sdapi/v1/txt2img", json={**body, "scheduler": scheduler}).json()
        images[scheduler] = pixels(decode_png(answer["images"][0]))
        assert f"Schedule type: {scheduler}," in json.loads(answer["info"])["infotexts"][0]
    options = dict(seed=5, steps=4, sampler="euler", guidance=7.0, schedule="exponential")
    (want,) = pipe.generate("a red circle", **options)
    assert np.array_equal(images["Exponential"], pixels(want))
    assert not np.array_equal(images["Karras"], images["Exponential"])


def test_webuiapi_schedulers_are_the_schedule_chosen(server, pipe, client):
    """GET /schedulers lists A1111's shape; each label names the σ spacing the image is really drawn with."""
    listed = {s["label"]: s for s in _api(server).get_schedulers()}
    assert {"Automatic", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "Beta"} <= set(listed)
    assert listed["SGM Uniform"] == {"name": "sgm_uniform", "label": "SGM Uniform", "aliases": ["SGMUniform"],
                                     "default_rho": -1, "need_inner_model": True}  # fmt: skip
    assert listed["Polyexponential"]["default_rho"] == 1.0 and listed["Karras"]["default_rho"] == 7.0
    body = {"prompt": "a red circle", "seed": 5, "steps": 4, "width": 8, "height": 8, "sampler_name": "Euler"}
    seen = []
    choices = (("Polyexponential", "polyexponential"), ("SGMUniform", "sgm_uniform"), ("Beta", "beta"))
    for typed, ours in choices:
        answer = client.post("/sdapi/v1/txt2img", json={**body, "scheduler": typed}).json()
        (want,) = pipe.generate("a red circle", seed=5, steps=4, sampler="euler", guidance=7.0, schedule=ours)
        got = pixels(decode_png(answer["images"][0]))
        assert np.array_equal(got, pixels(want)) and not any(np.array_equal(got, s) for s in seen)
        seen.append(got)
        label = next(s["label"] for s in listed.values() if s["name"] == ours)
        assert f"Schedule type: {label}," in json.loads(answer["info"])["infotexts"][0]


def test_webuiapi_png_info_and_lists(server, pipe, client):
    """png_info gives A1111's text (built from ours when that is all a PNG has) and its fields; the lists
    a client reads exist; endpoints without a meaning here are a 404 in A1111's error shape."""
    api = _api(server)
    (image,) = pipe.generate("a red circle", negative_prompt="blue", seed=4, steps=3)
    image.info[METADATA_KEY] = json.dumps(image.info[METADATA_KEY])  # webuiapi sends string entries
    answer = api.png_info(image).json  # a PNG with only noisecraft's JSON
    assert answer["info"].startswith("a red circle\nNegative prompt: blue\nSteps: 3, Sampler: Euler")
    assert answer["parameters"]["Seed"] == "4" and answer["parameters"]["Size-1"] == "8"
    assert json.loads(answer["items"][METADATA_KEY])["seed"] == 4
    made = _api(server, sampler="Euler", steps=3).txt2img(prompt="a star", seed=8, width=8, height=8)
    info = api.png_info(made.image).json
    assert info["info"] == made.info["infotexts"][0] and info["parameters"]["Prompt"] == "a star"
    assert api.png_info(Image.new("RGB", (4, 4))).json == {"info": "", "items": {}, "parameters": {}}
    assert api.get_sd_vae() == [] and api.get_loras() == []  # pixel models: no autoencoder
    flags = api.get_cmd_flags()
    assert flags["model"] == ["tiny", "tiny-b", "broken"] and flags["max_batch"] == LIMITS.max_batch
    with pytest.raises(RuntimeError, match="not supported by noisecraft"):
        api.interrogate(Image.new("RGB", (4, 4)))
    upscalers = client.get("/sdapi/v1/upscalers")
    assert upscalers.status_code == 404 and upscalers.json()["error"] == "HTTPException"
    assert upscalers.json()["detail"] == "/sdapi/v1/upscalers is not supported by noisecraft"
    interrogate = client.post("/sdapi/v1/interrogate", json={"image": "", "model": "clip"})
    assert interrogate.status_code == 404 and "not supported" in interrogate.json()["errors"]


def test_webuiapi_img2img_and_inpainting(server, pipe, client):
    api = _api(server, sampler="Euler", steps=6)
    source = pipe.generate("a red circle", seed=0)[0].resize((64, 64), Image.Resampling.NEAREST)
    init = from_pil(source, 3, 8)
    sdedit = api.img2img(
        images=[source], prompt="a blue square", seed=9, denoising_strength=0.5, width=8, height=8
    )
    want = pipe.img2img("a blue square", init, 0.5, steps=6, sampler="euler", guidance=7.0, seed=9)[0]
    assert np.array_equal(pixels(sdedit.image), pixels(want))
    with_init = api.img2img(images=[source], prompt="x", seed=9, width=8, height=8, include_init_images=True)
    assert len(with_init.images) == 2 and np.array_equal(pixels(with_init.images[1]), pixels(source))

    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 3:7] = 255
    big_mask = Image.fromarray(mask).resize((64, 64), Image.Resampling.NEAREST)
    painted = api.img2img(images=[source], mask_image=big_mask, prompt="a star", seed=2, width=8, height=8)
    want = pipe.inpaint(
        "a star", init, Image.fromarray(mask), steps=6, sampler="euler", guidance=7.0, seed=2
    )[0]
    got = pixels(painted.image)
    assert np.array_equal(got, pixels(want))
    kept, keep = pixels(to_pil(init[None])[0]), mask == 0  # the init image as the model sees it
    assert np.array_equal(got[keep], kept[keep]) and not np.array_equal(got[~keep], kept[~keep])


def test_sd_models_samplers_and_model_selection(server, client):
    api = _api(server)
    assert {"tiny", "tiny-b", "broken"} <= {m["model_name"] for m in api.get_sd_models()}
    names = api.util_get_sampler_names()
    assert {"Euler a", "DPM++ 2M", "Heun", "UniPC"} <= set(names)
    titles = api.util_get_model_names()
    b_title = next(t for t in titles if t.startswith("tiny-b"))
    body = {"prompt": "x", "override_settings": {"sd_model_checkpoint": b_title}, "width": 8, "height": 8}
    info = json.loads(client.post("/sdapi/v1/txt2img", json=body).json()["info"])  # no steps: the model's
    assert info["sd_model_name"] == "tiny-b" and info["steps"] == 3
    assert info["extra_generation_params"]["Native size"] == "8x8"
    assert api.util_get_current_model().startswith("tiny [")


def test_random_seed_is_reported_and_reproduces(server, client):
    first = client.post(
        "/sdapi/v1/txt2img", json={"prompt": "a", "seed": -1, "steps": 4, "width": 8, "height": 8}
    )
    seed = json.loads(first.json()["info"])["seed"]
    again = client.post(
        "/sdapi/v1/txt2img", json={"prompt": "a", "seed": seed, "steps": 4, "width": 8, "height": 8}
    )
    assert 0 <= seed < 2**32 and first.json()["images"] == again.json()["images"]


# -- the native streaming API ---------------------------------------------------------------------


def test_generate_streams_every_step_then_the_images(pipe, client):
    body = {
        "prompt": "a blue square",
        "steps": 6,
        "sampler": "euler",
        "guidance": 3.0,
        "guidance_rescale": 0.5,
        "guidance_interval": [0.5, 50.0],
        "seed": 5,
        "num_images": 2,
    }
    with client.stream("POST", "/v1/generate", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response.iter_lines()))
    kinds = [k for k, _ in events]
    assert kinds == ["queued"] + ["step"] * 6 + ["done"]
    steps = [d for k, d in events if k == "step"]
    assert [s["index"] for s in steps] == list(range(6)) and all(s["total"] == 6 for s in steps)
    sigmas = [s["sigma"] for s in steps]
    assert sigmas == sorted(sigmas, reverse=True) and steps[-1]["sigma_next"] == 0.0
    assert decode_png(steps[0]["preview"]).size == (19, 10)  # x̂0 of both images side by side
    done = events[-1][1]
    want = pipe.generate("a blue square", steps=6, sampler="euler", guidance=3.0, seed=5, num_images=2,
                         guidance_rescale=0.5, guidance_interval=(0.5, 50.0))  # fmt: skip
    for image, expected in zip(done["images"], want):
        assert np.array_equal(pixels(decode_png(image["image"])), pixels(expected))
    assert [i["seed"] for i in done["images"]] == [5, 6] and done["images"][1]["parameters"]["seed"] == 6
    assert done["heard"] == ["a blue square"]  # no vocabulary: the prompt as typed


def test_models_samplers_docs_and_page(client):
    models = client.get("/v1/models").json()
    assert models[0]["name"] == "tiny" and models[0]["default"] and models[0]["image_size"] == 8
    assert models[0]["control"] is False  # no control/ folder: the page hides its control panel
    assert "dpmpp_2m" in client.get("/v1/samplers").json()
    spec = client.get("/openapi.json").json()
    assert {"/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/v1/generate", "/sdapi/v1/progress"} <= set(
        spec["paths"]
    )
    for path in ("/", "/static/app.js", "/static/control.js", "/static/style.css"):
        assert client.get(path).status_code == 200, path
    pages = [file.read_text() for file in STATIC.iterdir() if file.suffix in (".html", ".js", ".css")]
    pages += [client.get(path).text for path in ("/docs", "/redoc")]
    for text in pages:  # nothing is fetched from elsewhere: the machines have no internet
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//|url\(\s*[\"']?(https?:)?//", text)


def test_docs_are_swagger_ui_and_redoc_from_installed_assets(client):
    swagger, redoc = client.get("/docs"), client.get("/redoc")
    assert swagger.status_code == redoc.status_code == 200
    assert "SwaggerUIBundle" in swagger.text and "<redoc spec-url=\"/openapi.json\"" in redoc.text
    assets = re.findall(r"(?:src|href)=\"(/docs-assets/[^\"]+)\"", swagger.text + redoc.text)
    assert sorted(assets) == [
        "/docs-assets/redoc.standalone.js", "/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"
    ]  # fmt: skip
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 100_000, asset
        assert b"cdn." not in response.content  # ReDoc's logo URL is pointed at the favicon
    assert client.get("/static/docs.js").status_code == 404  # the hand-written renderer is gone


def test_favicon_is_an_icon(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    icon = Image.open(io.BytesIO(response.content))
    assert icon.format == "ICO" and icon.size == (32, 32)


# -- limits, the queue, cancellation, interrupt, failures -----------------------------------------


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/sdapi/v1/txt2img", {"steps": LONG + 1}, "steps"),
        ("/sdapi/v1/txt2img", {"batch_size": 5}, "batch_size"),
        ("/sdapi/v1/txt2img", {"batch_size": 2, "n_iter": 3}, "n_iter"),
        ("/sdapi/v1/txt2img", {"width": 2048, "height": 1024}, "width"),
        ("/sdapi/v1/txt2img", {"prompt": "x" * 201}, "prompt"),
        ("/sdapi/v1/txt2img", {"negative_prompt": "x" * 201}, "negative_prompt"),
        ("/sdapi/v1/txt2img", {"sampler_name": "Euler z"}, "sampler_name"),
        ("/sdapi/v1/txt2img", {"scheduler": "KL Optimal"}, "scheduler"),
        ("/sdapi/v1/txt2img", {"override_settings": {"sd_model_checkpoint": "nope"}}, "override_settings"),
        ("/sdapi/v1/txt2img", {"script_name": "x/y/z plot"}, "script_name"),
        ("/sdapi/v1/txt2img", {"steps": -3}, "steps"),
        ("/sdapi/v1/txt2img", {"seed": -2}, "seed"),
        ("/sdapi/v1/img2img", {"init_images": ["not base64!"]}, "init_images"),
        ("/sdapi/v1/img2img", {"init_images": [base64.b64encode(EPS).decode()]}, "init_images"),
        ("/sdapi/v1/img2img", {"init_images": [_encoded(Image.new("RGB", (8, 8)), "TIFF")]}, "init_images"),
        ("/sdapi/v1/img2img", {"init_images": [png_b64(Image.new("RGB", (8, 8)))], "mask": "AAAA"}, "mask"),
        ("/sdapi/v1/img2img", {"init_images": [png_b64(Image.new("RGB", (8, 8)))] * 2}, "init_images"),
        ("/v1/generate", {"prompt": "x", "num_images": 5}, "num_images"),
        ("/v1/generate", {"prompt": "x", "steps": LONG + 1}, "steps"),
        ("/v1/generate", {"prompt": "x", "model": "nope"}, "model"),
        ("/v1/generate", {"prompt": "x", "mask": png_b64(Image.new("L", (8, 8)))}, "mask"),
        ("/v1/generate", {"prompt": "x", "stepz": 3}, "stepz"),
        ("/v1/generate", {"prompt": "x", "steps": 0}, "steps"),
        ("/v1/generate", {"prompt": "x", "schedule": "cosine"}, "schedule"),
        ("/v1/generate", {"prompt": "x", "sampler": "Euler z"}, "sampler"),
        ("/v1/generate", {"prompt": "x", "strength": 1.5}, "strength"),
        ("/v1/generate", {"prompt": "x", "guidance_rescale": 2}, "guidance_rescale"),
        ("/v1/generate", {"prompt": "x", "guidance_interval": [3, 1]}, "guidance_interval"),
        ("/v1/generate", {"prompt": "x", "guidance_interval": [-1, 1]}, "guidance_interval"),
        ("/v1/generate", {"prompt": "x", "guidance_interval": [0, 1, 2]}, "guidance_interval"),
    ],
)
def test_limits_and_bad_fields_are_422_naming_the_field(client, path, body, field):
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(field in d["loc"] for d in detail), detail


def test_full_queue_answers_429_and_departed_clients_cancel(client):
    before = client.get("/v1/status").json()
    long = {"prompt": "x", "steps": LONG, "num_images": 4}
    with contextlib.ExitStack() as stack:
        streams = []
        for expected in ("step", "queued", "queued"):  # one running, two waiting: the queue (2) is full
            response = stack.enter_context(client.stream("POST", "/v1/generate", json=long))
            events = sse_events(response.iter_lines())
            kind, _ = next(events)
            while kind != expected:
                kind, _ = next(events)
            streams.append(events)  # kept: a dropped generator closes its stream, which cancels the job
        full = client.post("/v1/generate", json={"prompt": "x", "steps": 2})
        assert full.status_code == 429 and int(full.headers["Retry-After"]) >= 1
        assert client.post("/sdapi/v1/txt2img", json={"steps": 2}).status_code == 429
    seconds = wait_until(lambda: _idle(client), 5, "the abandoned jobs to be dropped")
    assert seconds < 5  # the running job alone would take ≈ 10 s more
    after = client.get("/v1/status").json()
    assert after["cancelled"] - before["cancelled"] == 3 and after["completed"] == before["completed"]


def test_a1111_client_that_times_out_cancels_its_job(client):
    before = client.get("/v1/status").json()["cancelled"]
    with pytest.raises(httpx.ReadTimeout):
        client.post("/sdapi/v1/txt2img", json={"steps": LONG, "batch_size": 4}, timeout=1.0)
    wait_until(
        lambda: client.get("/v1/status").json()["cancelled"] == before + 1, 5, "the job to be cancelled"
    )
    assert _idle(client)


def test_progress_and_interrupt_are_the_jobs_own(server, client):
    """Another client sees how far the running job is, not its image or id, and cannot stop it; the
    client that names the job's id (A1111's force_task_id → id_task) sees and stops it."""
    task = "task(progress-test)"
    body = {"prompt": "x", "seed": 11, "batch_size": 2, "steps": LONG, "sampler_name": "Euler"}
    result: dict = {}
    body["force_task_id"] = task
    thread = threading.Thread(
        target=lambda: result.update(r=httpx.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=30))
    )
    start = time.monotonic()
    thread.start()
    wait_until(lambda: client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] > 3, 10, "sampling")
    api = _api(server)  # another client: webuiapi sends no id
    progress = api.get_progress()
    assert 0 < progress["progress"] < 0.5 and progress["eta_relative"] > 0
    assert progress["state"]["sampling_steps"] == LONG and progress["state"]["job_count"] == 1
    assert progress["current_image"] is None and progress["current_task"] is None
    api.interrupt()
    own = client.get("/sdapi/v1/progress", params={"id_task": task}).json()
    assert not own["state"]["interrupted"] and own["current_task"] == task
    assert decode_png(own["current_image"]).size == (8, 8)
    assert client.post("/sdapi/v1/interrupt", params={"id_task": task}).status_code == 200
    thread.join(10)
    assert time.monotonic() - start < 8  # the full job takes ≈ 10 s
    info = json.loads(result["r"].json()["info"])
    assert len(result["r"].json()["images"]) == 2 and info["extra_generation_params"]["Interrupted"]
    assert info["all_seeds"] == [11, 12]
    assert client.get("/sdapi/v1/progress").json()["progress"] == 0.0


def test_a_failing_request_leaves_the_server_serving(client):
    broken = {"prompt": "x", "steps": 3, "override_settings": {"sd_model_checkpoint": "broken"}}
    response = client.post("/sdapi/v1/txt2img", json=broken)
    assert response.status_code == 500 and "boom" in response.json()["detail"]
    with client.stream("POST", "/v1/generate", json={"prompt": "x", "steps": 3, "model": "broken"}) as stream:
        kinds = [(k, d) for k, d in sse_events(stream.iter_lines())]
    assert kinds[-1][0] == "error" and kinds[-1][1]["status"] == 500
    assert client.post("/sdapi/v1/txt2img", json={"steps": 3, "width": 8, "height": 8}).status_code == 200


# -- the command ----------------------------------------------------------------------------------


def test_serve_command_arguments_and_bad_model(tmp_path, capsys):
    from noisecraft.cli import build_parser, main

    args = build_parser().parse_args(["serve", "--model", "a", "b", "--port", "9000", "--max-steps", "30"])
    assert (
        args.models == ["a", "b"] and args.port == 9000 and args.max_steps == 30 and args.host == "127.0.0.1"
    )
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "unknown model" in capsys.readouterr().err
