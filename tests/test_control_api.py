"""Controls everywhere a user is: the CLI (with PNG metadata and --from-png), the native API and A1111's
``alwayson_scripts.controlnet`` units; bad maps are one line / a 422 naming the field."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from conftest import save_tiny_control_model
from PIL import Image, PngImagePlugin
from server_helpers import pixels, serve

from noisecraft.cli import main
from noisecraft.images import METADATA_KEY
from noisecraft.model import ControlSpec, SamplingOptions
from noisecraft.pipeline import GenerationRequest, Pipeline
from noisecraft.server.app import create_app
from noisecraft.server.limits import Limits
from noisecraft.server.models import ModelRegistry


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_control_model(tmp_path_factory.mktemp("ctl") / "tiny")


def _map() -> Image.Image:
    image = Image.new("RGB", (16, 16))  # twice the model's size: resized
    image.paste((255, 0, 0), (0, 0, 8, 16))
    return image


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _run(pipe, scale: float, window=(0.0, 1.0)):
    spec = ControlSpec(_map(), "layout", None, scale, window)
    return pipe.run(
        GenerationRequest("a red circle", options=SamplingOptions(steps=3, seed=4), controls=(spec,))
    )[0]


def test_cli_control_metadata_and_from_png(model_dir, tmp_path, capsys):
    pipe = Pipeline.load(model_dir)
    _map().save(tmp_path / "map.png")
    assert (
        main(
            [
                "generate",
                "a red circle",
                "--model",
                str(model_dir),
                "--steps",
                "3",
                "--seed",
                "4",
                "--quiet",
                "--control",
                str(tmp_path / "map.png"),
                "--control-scale",
                "0.5",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )
    (path,) = capsys.readouterr().out.split()
    made = Image.open(path)
    assert np.array_equal(pixels(made), pixels(_run(pipe, 0.5)))
    recorded = json.loads(made.info[METADATA_KEY])["controls"]
    assert recorded == [{"map": "map.png", "model": None, "scale": 0.5, "type": "layout",
                         "window": [0.0, 1.0]}]  # fmt: skip  (a name, not a path: --keep-paths records paths)
    again = ["--model", str(model_dir), "--control", str(tmp_path / "map.png"), "--control-scale", "0.5"]
    assert main(["generate", "--from-png", path, *again, "--quiet", "--out", str(tmp_path / "b")]) == 0
    assert np.array_equal(pixels(Image.open(capsys.readouterr().out.split()[0])), pixels(made))
    plain = pipe.run(GenerationRequest("a red circle", options=SamplingOptions(steps=3, seed=4)))[0]
    assert np.array_equal(pixels(_run(pipe, 0.0)), pixels(plain))  # scale 0: the base model, bit for bit
    assert not np.array_equal(pixels(made), pixels(plain))
    (tmp_path / "bad.png").write_bytes(b"no image")
    for extra in (["--control", str(tmp_path / "bad.png")], ["--control-scale", "2"]):
        assert main(["generate", "x", "--model", str(model_dir), "--quiet", *extra]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_from_png_keeps_a_controls_settings_from_our_json_or_a1111_text(model_dir, tmp_path, capsys):
    """--from-png with only --control MAP: the PNG's type, scale and window, from noisecraft's JSON or from
    A1111's ControlNet line alone; a PNG naming no map file asks for --control."""
    _map().save(tmp_path / "map.png")
    first = ["--model", str(model_dir), "--steps", "3", "--seed", "6", "--quiet"]
    first += ["--control", str(tmp_path / "map.png")]
    settings = ["--control-type", "segment", "--control-scale", "0.7", "--control-window", "0", "0.5"]
    assert main(["generate", "a red circle", *first, *settings, "--out", str(tmp_path / "a")]) == 0
    (path,) = capsys.readouterr().out.split()
    text = Image.open(path).info["parameters"]
    assert 'ControlNet 0: "Module: segment, Model: control, Weight: 0.7, Resize Mode: Just Resize, ' in text
    only_a1111 = tmp_path / "a1111.png"
    no_map = tmp_path / "no-map.png"
    for file, parameters in ((only_a1111, text), (no_map, text.replace(", Control map 0: map.png", ""))):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
        Image.new("RGB", (8, 8)).save(file, pnginfo=info)
    again = ["--model", str(model_dir), "--control", str(tmp_path / "map.png"), "--quiet"]
    for i, source in enumerate((path, only_a1111)):
        assert main(["generate", "--from-png", str(source), *again, "--out", str(tmp_path / f"b{i}")]) == 0
        again_made = Image.open(capsys.readouterr().out.split()[0])
        assert np.array_equal(pixels(again_made), pixels(Image.open(path)))
    assert main(["generate", "--from-png", str(only_a1111), *again, "--control-scale", "0", "--out",
                 str(tmp_path / "c")]) == 0  # fmt: skip  (a flag given wins: scale 0 is the model alone)
    options = SamplingOptions(steps=3, seed=6)
    plain = Pipeline.load(model_dir).run(GenerationRequest("a red circle", options=options))
    assert np.array_equal(pixels(Image.open(capsys.readouterr().out.split()[0])), pixels(plain[0]))
    refused = ((only_a1111, "control maps 'map.png'"), (no_map, "names no file for its 1 control"))
    for source, message in refused:
        assert main(["generate", "--from-png", str(source), "--model", str(model_dir), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


def test_native_and_a1111_controls_give_the_pipelines_image(model_dir):
    pipe = Pipeline.load(model_dir)
    want = pixels(_run(pipe, 0.8, (0.0, 0.5)))
    limits = Limits(queue_size=2, max_batch=4, max_steps=100, max_pixels=1024 * 1024, max_prompt_chars=200)
    unit = {"input_image": _b64(_map()), "module": "none", "model": "None", "weight": 0.8,
            "guidance_start": 0.0, "guidance_end": 0.5}  # fmt: skip
    body = {"prompt": "a red circle", "steps": 3, "seed": 4, "cfg_scale": 2.0, "width": 8, "height": 8,
            "sampler_name": "euler", "alwayson_scripts": {"controlnet": {"args": [unit]}}}  # fmt: skip
    with (
        serve(create_app(ModelRegistry({"tiny": pipe}), limits)) as url,
        httpx.Client(base_url=url, timeout=60) as c,
    ):
        assert [m["control"] for m in c.get("/v1/models").json()] == [True]  # the page shows its panel
        answer = c.post("/sdapi/v1/txt2img", json=body)
        assert answer.status_code == 200, answer.text
        got = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
        assert np.array_equal(pixels(got), want)
        unit_text = ('ControlNet 0: "Module: none, Model: control, Weight: 0.8, Resize Mode: Just Resize, '
                     'Guidance Start: 0.0, Guidance End: 0.5", Native size')  # fmt: skip
        assert unit_text in json.loads(answer.json()["info"])["infotexts"][0]
        assert unit_text in got.info["parameters"]
        native = {"prompt": "a red circle", "steps": 3, "seed": 4,
                  "controls": [{"image": _b64(_map()), "scale": 0.8, "window": [0.0, 0.5]}]}  # fmt: skip
        events = c.post("/v1/generate", json=native).text
        done = json.loads(events.split("event: done\ndata: ")[1].split("\n")[0])
        image = Image.open(io.BytesIO(base64.b64decode(done["images"][0]["image"].split(",")[1])))
        assert np.array_equal(pixels(image), want)
        bad = [({**unit, "input_image": "bm90IGFuIGltYWdl"}, "args[0]"),
               ({**unit, "model": "/etc/x"}, "model"),
               ({**unit, "module": "depth_midas"}, "module")]  # fmt: skip
        for broken, field in bad:
            answer = c.post(
                "/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"controlnet": {"args": [broken]}}}
            )
            assert answer.status_code == 422 and field in answer.text
        answer = c.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"adetailer": {"args": []}}})
        assert answer.status_code == 422
