"""The models that ship inside the package: they load by name, generate through the API and the CLI,
carry a complete model card, fit the size budget, and draw what they are asked for."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from noisecraft.cli import main
from noisecraft.data.shapes_oracle import fact_checks, parse_caption, read_scene
from noisecraft.images import read_png_metadata
from noisecraft.model import SHIPPED_DIR, shipped_models
from noisecraft.pipeline import Pipeline

REQUIRED = ("emoji", "shapes")
PROMPTS = {
    "shapes": "a red circle",
    "emoji": "red apple",
    "mnist": "a handwritten 7",
    "mnist-cd": "a handwritten 7",
    "emoji-cd": "red apple",
    "tones": "three loud drum hits",
}
MAX_BYTES = 25 * 1024 * 1024


def test_the_required_models_ship():
    assert set(REQUIRED) <= set(shipped_models()), shipped_models()


@pytest.fixture(scope="module", params=shipped_models())
def shipped(request) -> tuple[str, Pipeline]:
    return request.param, Pipeline.load(request.param)


def test_generates_through_the_api_batch_independently(shipped):
    name, pipe = shipped
    images = pipe.generate(PROMPTS.get(name, "a picture"), steps=4, seed=5, num_images=2)
    assert [im.size for im in images] == [(pipe.config.image_size,) * 2] * 2
    alone = pipe.generate(PROMPTS.get(name, "a picture"), steps=4, seed=6)[0]
    assert np.array_equal(np.asarray(alone), np.asarray(images[1]))
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))


def test_generates_through_the_cli_with_metadata(shipped, tmp_path):
    name, pipe = shipped
    args = ["generate", PROMPTS.get(name, "a picture"), "--model", name, "--steps", "3", "--num", "2"]
    assert main([*args, "--out", str(tmp_path), "--quiet"]) == 0
    pngs = sorted(p for p in tmp_path.glob("*.png") if p.name != "grid.png")
    assert len(pngs) == 2 and (tmp_path / "grid.png").is_file()
    meta = read_png_metadata(pngs[0])
    assert meta["model"] == name and meta["weights"] == pipe.weights_hash and meta["steps"] == 3


def test_model_card_and_size_budget(shipped):
    name, _ = shipped
    folder = SHIPPED_DIR / name
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= MAX_BYTES, f"{name}: {size / 2**20:.1f} MiB"
    assert not list(folder.rglob("*.pt")) and not list(folder.rglob("*.bin")), "safetensors + JSON only"
    card = (folder / "MODEL_CARD.md").read_text()
    for fact in ("| recipe |", "| steps |", "| images seen |", "| wall time", "| hardware |", "| data |"):
        assert fact in card, f"{name} card lacks {fact!r}"
    assert re.search(r"noisecraft (train|distill) \S+", card), "the card says how to reproduce the model"
    assert "## Measured" in card


@pytest.mark.skipif("shapes" not in shipped_models(), reason="shapes not shipped")
def test_shapes_draws_the_asked_colours():
    """Colour is the first thing a text-to-image model learns: the oracle must read it back."""
    pipe = Pipeline.load("shapes")
    colours = ("red", "blue", "green", "yellow")
    images = pipe.generate([f"a big {c} square in the middle" for c in colours], steps=20, seed=0)
    read = [[s.colour for s in read_scene(im).shapes] for im in images]
    assert sum(c in r for c, r in zip(colours, read)) >= 3, read


@pytest.mark.skipif("mnist" not in shipped_models(), reason="mnist not shipped")
def test_mnist_draws_the_prompted_digit():
    """The project's MNIST classifier reads back the digit each prompt asked for (chance: 1 in 10)."""
    from noisecraft.evaluation.classifier import load_domain_classifier

    digits = [0, 3, 5, 8]
    images = Pipeline.load("mnist").sample([f"a handwritten {d}" for d in digits], seed=0)  # [4, 1, 28, 28]
    with torch.no_grad():
        logits = load_domain_classifier("mnist")(images.clamp(-1, 1))
    assert logits.argmax(1).tolist() == digits


@pytest.mark.skipif("mnist-cd" not in shipped_models(), reason="mnist-cd not shipped")
def test_distilled_mnist_draws_the_prompted_digit_in_one_step():
    """The consistency model distilled from mnist: one network call per image, still the right digit."""
    from noisecraft.evaluation.classifier import load_domain_classifier

    digits = [1, 4, 6, 9]
    pipe = Pipeline.load("mnist-cd")
    assert pipe.config.sampler == "consistency" and pipe.config.guidance == 1.0
    images = pipe.sample([f"a handwritten {d}" for d in digits], seed=0, steps=1)  # [4, 1, 28, 28]
    with torch.no_grad():
        logits = load_domain_classifier("mnist")(images.clamp(-1, 1))
    assert logits.argmax(1).tolist() == digits


@pytest.mark.parametrize("name", ["emoji", "emoji-cd"])
def test_emoji_images_resemble_the_prompted_emoji(name):
    """Generated images (the distilled student's at its default 2 steps) are nearer, in pixels, to the
    prompted emoji than to any other of the 1,899."""
    from noisecraft.data.emoji import DEFAULT_FONT, EmojiDataset

    if name not in shipped_models():
        pytest.skip(f"{name} not shipped")
    if not Path(DEFAULT_FONT).is_file():
        pytest.skip("fonts-noto-color-emoji not installed")
    data = EmojiDataset(size=32, caption_variants=False)
    index = {e.name: i for i, e in enumerate(data.entries)}
    names = ["red apple", "rocket", "grinning face", "red heart"]
    pipe = Pipeline.load(name)
    images = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in pipe.generate(names)])
    gallery = torch.stack([data[i][0] for i in range(len(data))])  # [N, 3, 32, 32] in [-1, 1]
    distances = torch.cdist(images.flatten(1).double() / 127.5 - 1, gallery.flatten(1).double())
    ranks = [(distances[i] < distances[i, index[n]]).sum().item() for i, n in enumerate(names)]
    assert sum(r == 0 for r in ranks) >= 3, dict(zip(names, ranks))  # chance: 1 / 1899 per image


@pytest.mark.skipif("shapes" not in shipped_models(), reason="shapes not shipped")
def test_shapes_background_and_position_words_steer_the_picture():
    """The words that decide the whole picture (background, where a shape sits) are decided at high σ,
    where only the prompt can tell: a model trained or sampled too low ignores them."""
    pipe = Pipeline.load("shapes")
    backgrounds = ("black", "white", "black", "white")
    prompts = [f"a big red circle on a {b} background" for b in backgrounds]
    sides = ("left", "right", "left", "right")
    prompts += [f"a small blue square on the {side}" for side in sides]
    scenes = [read_scene(im) for im in pipe.generate(prompts, steps=20, seed=0)]
    read_backgrounds = [s.background for s in scenes[:4]]
    assert sum(b == r for b, r in zip(backgrounds, read_backgrounds)) >= 3, read_backgrounds
    read_x = [round(s.shapes[0].x, 2) if len(s.shapes) == 1 else None for s in scenes[4:]]
    on_side = [x is not None and (x < 0.4 if side == "left" else x > 0.6) for side, x in zip(sides, read_x)]
    assert sum(on_side) >= 3, read_x


@pytest.mark.skipif("shapes" not in shipped_models(), reason="shapes not shipped")
def test_shapes_puts_two_named_shapes_in_the_named_order():
    """Swapping the two names of "A left of B" must swap the picture: the prompt's word order, which
    cross-attention alone cannot see, decides which shape goes where (a coin flip would pass 1 in 14)."""
    pairs = [("red circle", "blue square", "left of"), ("green star", "yellow triangle", "above")]
    pairs += [("purple square", "cyan circle", "to the right of")]
    prompts = [f"a {a} {rel} a {b}" for a, b, rel in pairs] + [f"a {b} {rel} a {a}" for a, b, rel in pairs]
    prompts = prompts * 2  # two seeds each
    images = Pipeline.load("shapes").generate(prompts, steps=20, seed=0)
    right = [
        fact_checks(read_scene(im), parse_caption(p)).get("relation", False) for im, p in zip(images, prompts)
    ]
    assert sum(right) >= 9, list(zip(prompts, right))


@pytest.mark.skipif("shapes" not in shipped_models(), reason="shapes not shipped")
def test_shapes_own_layout_control_puts_the_shapes_where_the_map_does():
    from noisecraft.evaluation.control import control_adherence

    pipe = Pipeline.load("shapes")
    steered = control_adherence(pipe, None, n=6, steps=10)  # the model's own control/ folder
    alone = control_adherence(pipe, None, n=6, steps=10, scale=0.0)
    assert steered["share"] >= 5 / 6 and alone["share"] <= 3 / 6, (steered, alone)
