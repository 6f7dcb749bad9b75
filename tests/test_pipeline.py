"""Pipeline on a tiny random model: seeds, batch independence, save/load, img2img, inpainting, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline
from PIL import Image

from noisecraft.images import METADATA_KEY
from noisecraft.pipeline import Pipeline


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return make_tiny_pipeline()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def test_same_seed_same_image_whatever_the_batch(pipe):
    both = pipe.generate(["a red circle", "a blue square"], seed=5)
    alone = pipe.generate("a blue square", seed=6)
    assert np.array_equal(pixels(both[1]), pixels(alone[0]))
    assert not np.array_equal(pixels(both[0]), pixels(pipe.generate("a red circle", seed=7)[0]))


def test_sampled_tensors_are_bit_identical_whatever_the_batch(pipe):
    """Not only the 8-bit pixels: CPU kernels round differently for different batch sizes, so the
    pipeline encodes prompts one by one and runs the network on fixed-size chunks (FixedBatch)."""
    prompts = ["a red circle", "a blue square", "a green star", "a red circle", "a star above a square"]
    five = pipe.sample(prompts, seed=10)  # image i: seed 10 + i
    nine = pipe.sample(prompts + prompts[:4], seed=10)
    for i, prompt in enumerate(prompts):
        alone = pipe.sample([prompt], seed=10 + i)
        assert torch.equal(alone[0], five[i]) and torch.equal(alone[0], nine[i]), i
    assert not torch.equal(five[0], five[3])  # same prompt, another seed


def test_num_images_and_metadata(pipe):
    images = pipe.generate("a star", num_images=3, seed=2)
    assert len(images) == 3 and images[0].size == (8, 8)
    meta = images[2].info[METADATA_KEY]
    assert meta["seed"] == 4 and meta["prompt"] == "a star" and meta["steps"] == 4 and meta["model"] == "tiny"
    assert len(meta["weights"]) == 16


def test_prompt_and_guidance_change_the_image(pipe):
    a = pixels(pipe.generate("a red circle", seed=0)[0])
    assert not np.array_equal(a, pixels(pipe.generate("a blue square", seed=0)[0]))
    assert not np.array_equal(a, pixels(pipe.generate("a red circle", seed=0, guidance=6.0)[0]))
    assert not np.array_equal(a, pixels(pipe.generate("a red circle", seed=0, negative_prompt="blue")[0]))


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save(tmp_path / "model")
    again = Pipeline.load(tmp_path / "model")
    assert again.weights_hash == pipe.weights_hash
    assert np.array_equal(
        pixels(again.generate("a star", seed=3)[0]), pixels(pipe.generate("a star", seed=3)[0])
    )


def test_components_load_with_diffusers_spelling(pipe, tmp_path):
    from noisecraft.components import ComponentError
    from noisecraft.nets import UNet
    from noisecraft.text.builtin import BuiltinTextEncoder

    folder = pipe.save_pretrained(tmp_path / "model")  # pipeline.json + net/ + text_encoder/
    net = UNet.from_pretrained(folder / "net")
    encoder = BuiltinTextEncoder.from_pretrained(folder / "text_encoder")
    assert isinstance(net, UNet) and net.config == pipe.net.config
    for ours, theirs in ((net, pipe.net), (encoder, pipe.text_encoder)):
        pairs = zip(ours.state_dict().values(), theirs.state_dict().values())
        assert all(torch.equal(a, b) for a, b in pairs)
    with pytest.raises(ComponentError, match="holds a BuiltinTextEncoder, expected a UNet"):
        UNet.from_pretrained(folder / "text_encoder")
    again = Pipeline.from_pretrained(folder)
    (image,), (want,) = again.generate("a star", seed=3), pipe.generate("a star", seed=3)
    assert np.array_equal(pixels(image), pixels(want))


def test_img2img_strength_bounds(pipe):
    source = pipe.generate("a red circle", seed=0)[0]
    same = pipe.img2img("a blue square", source, strength=0.0, seed=9)[0]
    assert np.array_equal(pixels(same), pixels(source))
    fresh = pipe.img2img("a blue square", source, strength=1.0, seed=9)[0]
    assert np.array_equal(pixels(fresh), pixels(pipe.generate("a blue square", seed=9)[0]))
    partial = pixels(pipe.img2img("a blue square", source, strength=0.5, seed=9)[0])
    assert not np.array_equal(partial, pixels(source)) and not np.array_equal(partial, pixels(fresh))


def test_inpaint_keeps_unmasked_pixels_exactly(pipe):
    source = pipe.generate("a red circle", seed=0)[0]
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    out = pixels(pipe.inpaint("a blue square", source, Image.fromarray(mask), seed=1)[0])
    keep = mask == 0
    assert np.array_equal(out[keep], pixels(source)[keep])
    assert not np.array_equal(out[~keep], pixels(source)[~keep])


def test_guidance_interval_and_rescale(pipe):
    """An interval holding every σ of the walk is plain guidance; one holding none is guidance 1
    (the conditional prediction alone); rescale changes the image; all of it lands in the metadata."""
    sigma_max = pipe.config.sigma_max
    plain = pipe.sample(["a red circle"], guidance=3.0, seed=0)
    assert torch.equal(
        pipe.sample(["a red circle"], guidance=3.0, seed=0, guidance_interval=(0.0, sigma_max)), plain
    )
    unguided = pipe.sample(["a red circle"], guidance=1.0, seed=0)
    above = (sigma_max, sigma_max + 1.0)
    assert torch.equal(pipe.sample(["a red circle"], guidance=3.0, seed=0, guidance_interval=above), unguided)
    assert not torch.equal(plain, unguided)
    partial = pipe.sample(["a red circle"], guidance=3.0, seed=0, guidance_interval=(0.0, 1.0))
    assert not torch.equal(partial, plain) and not torch.equal(partial, unguided)
    (image,) = pipe.generate("a red circle", guidance=3.0, guidance_rescale=0.7, guidance_interval=(0.0, 1.0))
    assert not torch.equal(pipe.sample(["a red circle"], guidance=3.0, seed=0, guidance_rescale=0.7), plain)
    meta = image.info[METADATA_KEY]
    assert meta["guidance_rescale"] == 0.7 and meta["guidance_interval"] == [0.0, 1.0]
    assert "guidance_rescale" not in pipe.generate("a star")[0].info[METADATA_KEY]  # defaults stay out


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"guidance_rescale": 1.5}, "rescale must be in"),
        ({"guidance_rescale": float("nan")}, "rescale must be in"),
        ({"guidance_interval": (2.0, 1.0)}, "0 <= lo < hi"),
        ({"guidance_interval": (0.0, float("inf"))}, "finite upper"),
        ({"guidance_interval": (1.0,)}, "two numbers"),
        ({"steps": 0}, "steps"),
        ({"guidance": float("nan")}, "guidance"),
        ({"sampler": "nope"}, "unknown sampler"),
        ({"num_images": 0}, "num_images"),
        ({"seed": 2**64}, "seed must be an integer from -2\\*\\*63"),
        ({"seed": 2**64 - 1, "num_images": 2}, r"to 2\*\*64 - 2 .*got 18446744073709551615"),
    ],
)
def test_bad_settings(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe.generate("a star", **kwargs)


def test_bad_inputs(pipe, tmp_path):
    with pytest.raises(ValueError, match="prompts"):
        pipe.generate([])
    with pytest.raises(ValueError, match="mask"):
        pipe.inpaint("x", Image.new("RGB", (8, 8)), torch.ones(1, 9, 9))  # a tensor mask must fit
    with pytest.raises(ValueError, match="strength"):
        pipe.img2img("x", Image.new("RGB", (8, 8)), strength=1.5)
    with pytest.raises(ValueError, match="unknown model"):
        Pipeline.load(tmp_path / "missing")


@pytest.mark.parametrize(
    "damage, message",
    [
        ({"image_size": "big"}, r"pipeline\.json: image_size must be a positive integer, got 'big'"),
        ({"image_size": -4}, "image_size must be a positive integer, got -4"),
        ({"channels": 2}, r"channels must be 1 \(grey\) or 3 \(RGB\), got 2"),
        ({"guidance": None}, "guidance must be a finite number, got None"),
        ([1, 2], "expected a JSON object, got list"),
    ],
)
def test_load_refuses_a_damaged_pipeline_json(pipe, tmp_path, damage, message):
    folder = pipe.save(tmp_path / "model")
    values = json.loads((folder / "pipeline.json").read_text())
    values = {**values, **damage} if isinstance(damage, dict) else damage
    (folder / "pipeline.json").write_text(json.dumps(values))
    with pytest.raises(ValueError, match=message):
        Pipeline.load(folder)


def test_load_refuses_a_text_model_without_its_encoder(pipe, tmp_path):
    folder = pipe.save(tmp_path / "model")
    shutil.rmtree(folder / "text_encoder")
    with pytest.raises(
        ValueError, match=r"takes text of width 16 but the text encoder gives 0 \(no text_encoder/"
    ):
        Pipeline.load(folder)
