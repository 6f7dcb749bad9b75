"""Cascaded diffusion (model/upscale.py): the upscaler's input in training and at generation, its recipe,
and a cascade folder generating through Pipeline and the CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline
from PIL import Image

from noisecraft.callbacks import StepRecorder
from noisecraft.cli import main
from noisecraft.model import OptionError
from noisecraft.model.upscale import copy_base, enlarge, shrink, stage_callbacks, training_input
from noisecraft.nets import UNet
from noisecraft.pipeline import Pipeline, PipelineConfig
from noisecraft.samplers import Step
from noisecraft.training import load_config

UPSCALER_SETS = [
    "steps=2", "threads=1", "data.name=shapes", "data.cache=off", 'data.options={size = 16, length = 8}',
    "optim.batch_size=4", "model.net.image_size=16", "model.net.channels=8", "model.net.channel_mult=[1,2]",
    "model.net.attention_resolutions=[8]", "model.net.head_dim=8", "model.upscale_from=8",
    "log.progress=false",
]  # fmt: skip


def test_shrink_is_the_block_mean_and_enlarge_keeps_a_flat_picture():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    low = shrink(x, 2)
    assert low.shape == (2, 3, 4, 4)
    assert torch.allclose(low[1, 2, 3, 1], x[1, 2, 6:8, 2:4].mean())
    flat = torch.full((1, 3, 4, 4), 0.25)
    big = enlarge(flat, 4)
    assert big.shape == (1, 3, 16, 16) and torch.allclose(big, torch.full((1,), 0.25))


def test_training_input_noises_each_image_by_its_own_level_up_to_the_bound():
    x0 = torch.zeros(64, 3, 8, 8)
    clean = training_input(x0, 2, 0.0, torch.Generator().manual_seed(0), 64, slice(0, 64))
    assert torch.equal(clean, x0)  # no noise: the picture itself, shrunk and enlarged
    noisy = training_input(x0, 2, 0.2, torch.Generator().manual_seed(0), 64, slice(0, 64))
    less = training_input(x0, 2, 0.1, torch.Generator().manual_seed(0), 64, slice(0, 64))
    assert torch.allclose(noisy, 2 * less, atol=1e-6)  # the same draws, each scaled by the bound
    spread = noisy.flatten(1).std(1)  # each image's own level (enlarging smooths it: below the level)
    assert spread.max() < 0.2 and spread.min() < 0.1 * spread.max()
    half = training_input(x0[32:], 2, 0.2, torch.Generator().manual_seed(0), 64, slice(32, 64))
    full = training_input(x0, 2, 0.2, torch.Generator().manual_seed(0), 64, slice(0, 64))
    assert torch.equal(half, full[32:])  # a process's share of the global batch: the same draws


def _cascade(folder) -> Pipeline:
    """A tiny upscaler (8 → 16) over the tiny pipeline, saved with it as base/, loaded back."""
    base = make_tiny_pipeline()
    torch.manual_seed(3)
    shape = {"image_size": 16, "in_channels": 6, "out_channels": 3, "attention_resolutions": (8,)}
    net = UNet(dataclasses.replace(base.net.config, **shape))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    config = dataclasses.replace(base.config, name="tiny-up", image_size=16, upscale_from=8)
    Pipeline(net, base.text_encoder, config).save(folder)
    copy_base(base.save(folder.parent / "tiny-base"), folder)
    return Pipeline.load(folder)


def test_a_cascade_feeds_the_base_models_pictures_enlarged_to_the_upscaler(tmp_path):
    pipe = _cascade(tmp_path / "up")
    seen = []
    pipe.net.register_forward_pre_hook(lambda module, args: seen.append(args[2].image.clone()))
    images = pipe.generate(["a cat", "a dog"], seed=5, steps=3)
    assert [image.size for image in images] == [(16, 16)] * 2
    low = pipe.base.sample(["a cat", "a dog"], seed=5, steps=3)  # [2, 3, 8, 8]
    assert low.shape == (2, 3, 8, 8)
    expected = enlarge(low, 2)  # the upscaler's CFG batch: the prompts, then the negative prompt
    assert all(torch.allclose(image[:2], expected, atol=1e-6) for image in seen) and len(seen) == 3
    assert all(torch.allclose(image[2:], expected, atol=1e-6) for image in seen)


def test_upscaling_the_base_models_pictures_is_generating_and_other_inputs_are_refused(tmp_path):
    pipe = _cascade(tmp_path / "up")
    prompts = ["a cat", "a dog"]
    low = pipe.base.sample(prompts, seed=2, steps=3)  # [2, 3, 8, 8]
    made = pipe.upscale(prompts, low, seed=2, steps=3)
    want = pipe.sample(prompts, seed=2, steps=3)
    assert made.shape == (2, 3, 16, 16) and torch.allclose(made, want, atol=1e-6)
    other = pipe.upscale(prompts, torch.zeros_like(low), seed=2, steps=3)
    assert (other - made).abs().max() > 0.05  # the pictures given are the ones enlarged
    with pytest.raises(ValueError, match=r"must be a tensor of shape \(2, 3, 8, 8\), got \(1, 3, 8, 8\)"):
        pipe.upscale(prompts, low[:1], seed=2, steps=3)
    with pytest.raises(ValueError, match="not an upscaler"):
        pipe.base.upscale(prompts, low)


def test_a_cascade_image_is_the_same_whatever_its_batch_and_says_what_made_it(tmp_path):
    pipe = _cascade(tmp_path / "up")
    pair = pipe.generate(["a cat", "a dog"], seed=5, steps=3)
    (alone,) = pipe.generate("a dog", seed=6, steps=3)
    assert np.array_equal(np.asarray(alone), np.asarray(pair[1]))
    assert not np.array_equal(np.asarray(pair[0]), np.asarray(pair[1]))
    record = alone.info["noisecraft"]
    assert record["size"] == [16, 16] and record["seed"] == 6
    base_hash = pipe.base.weights_hash
    pipe.base.net.conv_in.weight.data.add_(1.0)
    pipe.base._weights_hash, pipe._weights_hash = None, None
    assert pipe.base.weights_hash != base_hash and pipe.weights_hash != record["weights"]  # base counts


def test_a_cascade_reports_one_walk_at_the_final_size(tmp_path):
    pipe = _cascade(tmp_path / "up")
    recorder = StepRecorder(count=100)
    pipe.generate("a cat", seed=0, steps=3, callback=recorder)
    steps = [step for step, _, _ in recorder.frames]
    assert [s.index for s in steps] == list(range(6)) and {s.total for s in steps} == {6}
    assert all(image.size == (16, 16) for _, xs, ds in recorder.frames for image in xs + ds)


def test_stage_callbacks_pass_nothing_without_a_callback_and_enlarge_the_base_steps():
    assert stage_callbacks(None, 2) == (None, None)
    got: list[Step] = []
    first, then = stage_callbacks(got.append, 4)
    first(Step(0, 5.0, torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), 1.0, 1))
    then(Step(0, 5.0, torch.ones(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), 0.0, 1))
    assert [(s.index, s.total, s.x.shape[-1]) for s in got] == [(0, 2, 8), (1, 2, 8)]


def test_a_cascade_saved_in_half_precision_loads_as_a_cascade(tmp_path):
    pipe = _cascade(tmp_path / "up")
    copy = Pipeline.load(pipe.save(tmp_path / "copy", dtype=torch.float16))
    assert copy.base is not None and copy.base.config == pipe.base.config
    rounded = pipe.base.net.conv_in.weight.half().float()  # the base was saved in half precision too
    assert torch.equal(copy.base.net.conv_in.weight, rounded) and not torch.equal(
        rounded, pipe.base.net.conv_in.weight
    )
    (image,) = copy.generate("a cat", seed=1, steps=2)
    assert image.size == (16, 16)


def test_a_cascade_refuses_an_init_image_and_a_folder_without_its_base(tmp_path):
    pipe = _cascade(tmp_path / "up")
    with pytest.raises(OptionError, match="upscaler makes pictures from text only"):
        pipe.img2img("a cat", Image.new("RGB", (16, 16)), strength=0.5)
    for part in (tmp_path / "up" / "base").iterdir():
        part.unlink() if part.is_file() else None
    with pytest.raises(ValueError, match="upscaler without base/"):
        Pipeline.load(tmp_path / "up")
    with pytest.raises(ValueError, match="no base model"):
        Pipeline(pipe.net, pipe.text_encoder, pipe.config).generate("a cat", steps=2)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"upscale_from": 12}, "upscale_from must be a side smaller than the model's 16 that divides it"),
        ({"upscale_from": -1}, "upscale_from must be an integer >= 0"),
        ({"upscale_from": 16}, "smaller than the model's 16"),
    ],
)
def test_settings_refuse_an_upscale_side_that_does_not_divide(fields, message):
    with pytest.raises(ValueError, match=message):
        PipelineConfig(image_size=16, **fields)
    assert "upscale_from" not in PipelineConfig(image_size=16).as_dict()  # other models say nothing


def test_the_upscaler_recipe_trains_and_exports_a_cascade(tmp_path, tiny_pipeline_dir):
    recipe = load_config("configs/emoji64.toml")
    assert recipe.model.upscale_from * 2 == recipe.model.net["image_size"] == recipe.data.options["size"]
    out = tmp_path / "run"
    sets = [*UPSCALER_SETS, f"model.upscale_base={tiny_pipeline_dir}"]
    assert main(["train", "configs/emoji64.toml", "--out", str(out), "--set", *sets]) == 0
    folder = out / "model"
    assert json.loads((folder / "pipeline.json").read_text())["upscale_from"] == 8
    base = (folder / "base" / "pipeline.json").read_bytes()
    assert base == (tiny_pipeline_dir / "pipeline.json").read_bytes()
    images = folder.parent / "images"
    made = ["generate", "a red circle", "--model", str(folder), "--steps", "2", "--out", str(images)]
    assert main(made) == 0
    (made,) = images.glob("*.png")
    with Image.open(made) as image:
        assert image.size == (16, 16)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["model.net.in_channels=3"], "model.net.in_channels twice model.net.out_channels"),
        (["text.kind=builtin"], "text.kind = 'minilm'"),
        (["sampling.every=10"], "sampling.every = 0"),
        (["model.upscale_base="], "model.upscale_base"),
        (["model.upscale_from=0"], "model.upscale_base and model.upscale_noise need model.upscale_from"),
    ],
)
def test_the_upscaler_recipe_names_what_an_upscaler_needs(sets, message):
    with pytest.raises(ValueError, match=message):
        load_config("configs/emoji64.toml", sets)


def test_training_an_upscaler_on_a_missing_base_stops_before_it_starts(tmp_path, capsys):
    sets = [*UPSCALER_SETS, f"model.upscale_base={tmp_path / 'nowhere'}"]
    assert main(["train", "configs/emoji64.toml", "--out", str(tmp_path / "run"), "--set", *sets]) != 0
    assert "unknown model" in capsys.readouterr().err and not (tmp_path / "run" / "checkpoints").exists()


def test_the_server_streams_a_cascade_as_one_walk_and_returns_its_pictures(tmp_path):
    import httpx
    from server_helpers import decode_png, pixels, serve, sse_events

    from noisecraft.server.app import create_app
    from noisecraft.server.limits import Limits
    from noisecraft.server.models import ModelRegistry

    pipe = _cascade(tmp_path / "up")
    body = {"prompt": "a cat", "steps": 3, "sampler": "euler", "seed": 4, "num_images": 1}
    with (
        serve(create_app(ModelRegistry({"up": pipe}), Limits())) as url,
        httpx.Client(base_url=url) as client,
    ):
        assert client.get("/v1/models").json()[0]["image_size"] == 16
        with client.stream("POST", "/v1/generate", json=body, timeout=60) as response:
            events = list(sse_events(response.iter_lines()))
        refused = client.post(
            "/sdapi/v1/img2img", json={"prompt": "x", "init_images": [_png(16)]}, timeout=60
        )
    steps = [data for kind, data in events if kind == "step"]
    assert [s["index"] for s in steps] == list(range(6)) and {s["total"] for s in steps} == {6}
    assert decode_png(steps[0]["preview"]).size == (16, 16)  # the base model's step, enlarged
    (made,) = events[-1][1]["images"]
    (want,) = pipe.generate("a cat", steps=3, sampler="euler", seed=4)
    assert np.array_equal(pixels(decode_png(made["image"])), pixels(want))
    assert refused.status_code == 422 and "upscaler makes pictures from text only" in refused.text


def _png(side: int) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), "white").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_an_upscalers_card_says_what_it_enlarges():
    from noisecraft.model_card import card_text
    from noisecraft.training.config import to_dict

    config = to_dict(load_config("configs/emoji64.toml"))
    card = card_text("emoji64", "emoji64", {"step": 10, "config": config}, {}, "cpu")
    assert (
        "An upscaler (cascaded diffusion, Ho et al. 2022) that enlarges the 32-pixel pictures of `emoji`"
        in card
    )
    assert "noisecraft train emoji64 --out runs/emoji64" in card
