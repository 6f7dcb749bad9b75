"""Shapes dataset and its oracle: determinism, captions that tell the truth, reading pictures back."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from noisecraft.data.shapes import (
    COLOURS,
    HELDOUT,
    KINDS,
    POSITION_PHRASES,
    RELATION_PHRASES,
    Scene,
    Shape,
    ShapesDataset,
    position_of,
    relation_of,
    render,
)
from noisecraft.data.shapes_oracle import (
    CaptionSpec,
    ShapeSpec,
    fact_checks,
    matches,
    parse_caption,
    read_scene,
    satisfies,
    spec_of,
)

N_ORACLE = 1000


@pytest.fixture(scope="module")
def drawn():
    """1000 training scenes with captions, their 32×32 pictures, and what the oracle reads back."""
    ds = ShapesDataset(size=32, length=N_ORACLE, seed=7)
    items = [ds.scene_and_caption(i) for i in range(N_ORACLE)]
    images = [render(scene, 32) for scene, _ in items]
    return items, images, [read_scene(image) for image in images]


def test_items_are_a_pure_function_of_seed_and_index():
    a, b = ShapesDataset(length=50, seed=3), ShapesDataset(length=50, seed=3)
    late = b[17]  # read out of order, after nothing else: no hidden state between items
    for i in (0, 17, 49):
        image, caption = a[i]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert -1 <= image.min() and image.max() <= 1
        assert torch.equal(image, b[i][0]) and caption == b[i][1]
    assert torch.equal(a[17][0], late[0])
    other = ShapesDataset(length=50, seed=4)
    assert sum(other[i][1] != a[i][1] for i in range(20)) >= 15  # another seed, other scenes
    with pytest.raises(IndexError):
        a[50]


def test_captions_describe_their_scene(drawn):
    items, _, _ = drawn
    for scene, caption in items:
        spec = parse_caption(caption)
        assert satisfies(scene, spec), (caption, scene)
        # every shape is named by colour and kind, so a caption pins down the scene's identities
        assert len(spec.shapes) == len(scene.shapes)
        assert all(s.colour is not None and s.kind is not None for s in spec.shapes)
    counts = [len(scene.shapes) for scene, _ in items]
    assert 0.3 < counts.count(1) / len(counts) < 0.5  # one shape with probability 0.4


def test_every_phrase_in_the_vocabulary_parses():
    for word, phrases in POSITION_PHRASES.items():
        for phrase in phrases:
            assert parse_caption(f"a red star {phrase}").position == word
    for rel, phrases in RELATION_PHRASES.items():
        for phrase in phrases:
            spec = parse_caption(f"a big red star {phrase} a blue circle on a black background")
            assert spec.relation == rel and spec.background == "black"
            assert spec.shapes == (ShapeSpec("red", "star", "large"), ShapeSpec("blue", "circle", None))
    with pytest.raises(ValueError, match="1 or 2"):
        parse_caption("a photo of a cat")


def test_oracle_reads_back_at_least_99_percent(drawn):
    items, images, reads = drawn
    correct = sum(satisfies(read, spec_of(scene)) for (scene, _), read in zip(items, reads))
    print(
        f"oracle: all facts (colour, kind, size, position/relation, background) right on {correct}/{N_ORACLE}"
    )
    assert correct / N_ORACLE >= 0.99
    # the public entry point on the captions themselves
    assert sum(matches(images[i], items[i][1]) for i in range(200)) >= 198


def test_oracle_rejects_other_images_captions(drawn):
    items, _, reads = drawn
    rejected = wrong = accepted = right = 0
    for i, read in enumerate(reads):
        truth, other = items[i][0], parse_caption(items[(i + 1) % N_ORACLE][1])
        if satisfies(truth, other):  # the other caption happens to be true of this picture too
            right += 1
            accepted += satisfies(read, other)
        else:
            wrong += 1
            rejected += not satisfies(read, other)
    assert wrong > 900 and rejected / wrong >= 0.99
    assert accepted == right


def _near_misses(scene: Scene) -> list[tuple[str, CaptionSpec]]:
    """The scene's full description with exactly one fact changed, each with the fact's name."""
    spec = spec_of(scene)
    out = []
    for i, s in enumerate(spec.shapes):
        for fact, change in (
            ("colour", {"colour": next(c for c in COLOURS if c != s.colour)}),
            ("kind", {"kind": next(k for k in KINDS if k != s.kind)}),
            ("size", {"size": "small" if s.size == "large" else "large"}),
        ):
            shapes = list(spec.shapes)
            shapes[i] = dataclasses.replace(s, **change)
            out.append((fact, dataclasses.replace(spec, shapes=tuple(shapes))))
    if spec.relation is not None:
        flipped = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        out.append(("relation", dataclasses.replace(spec, relation=flipped[spec.relation])))
    if spec.position is not None:
        moved = "center" if spec.position != "center" else "left"
        out.append(("position", dataclasses.replace(spec, position=moved)))
    other_background = next(b for b in ("white", "black") if b != spec.background)
    out.append(("background", dataclasses.replace(spec, background=other_background)))
    return out


def test_oracle_rejects_one_wrong_fact(drawn):
    items, _, reads = drawn
    total = rejected = 0
    for (scene, _), read in zip(items[:300], reads[:300]):
        for _, spec in _near_misses(scene):
            if satisfies(scene, spec):  # a changed fact can still hold (two shapes with swapped roles)
                continue
            total += 1
            rejected += not satisfies(read, spec)
    assert total > 1500 and rejected / total >= 0.99


def test_fact_checks_name_the_one_wrong_fact(drawn):
    items, _, reads = drawn
    named = total = 0
    for (scene, _), read in zip(items[:300], reads[:300]):
        assert all(fact_checks(scene, spec_of(scene)).values())
        for fact, spec in _near_misses(scene):
            if satisfies(scene, spec):
                continue
            checks = fact_checks(read, spec)
            total += 1
            named += not checks[fact] and sum(not ok for ok in checks.values()) == 1
    assert total > 1500 and named / total >= 0.98
    wrong_count = Scene(items[0][0].shapes * 2, items[0][0].background)  # too many pieces
    assert fact_checks(wrong_count, spec_of(items[0][0]))["count"] is False


def test_heldout_split_is_disjoint_from_training():
    train = ShapesDataset(length=1500, seed=0, split="train")
    heldout = ShapesDataset(length=400, seed=0, split="heldout")
    train_items = [train.scene_and_caption(i) for i in range(len(train))]
    held_items = [heldout.scene_and_caption(i) for i in range(len(heldout))]
    combos = lambda scene: {(s.colour, s.kind) for s in scene.shapes}  # noqa: E731
    assert all(not combos(scene) & HELDOUT for scene, _ in train_items)
    assert all(combos(scene) & HELDOUT for scene, _ in held_items)
    assert not {c for _, c in train_items} & {c for _, c in held_items}
    # yet every colour and every kind is seen in training: held out are the combinations only
    assert {s.colour for scene, _ in train_items for s in scene.shapes} == set(COLOURS)
    assert {s.kind for scene, _ in train_items for s in scene.shapes} == set(KINDS)
    assert {frozenset(combos(scene) & HELDOUT) for scene, _ in held_items} >= {
        frozenset({h}) for h in HELDOUT
    }


def test_geometry_words_match_coordinates():
    lone = lambda x, y: Shape("red", "circle", "small", x, y, 0.13)  # noqa: E731
    assert [
        position_of(lone(x, y)) for x, y in [(0.2, 0.5), (0.8, 0.55), (0.5, 0.2), (0.45, 0.8), (0.5, 0.5)]
    ] == [
        "left",
        "right",
        "top",
        "bottom",
        "center",
    ]
    a, b = lone(0.25, 0.5), lone(0.75, 0.6)
    assert relation_of(a, b) == "left of" and relation_of(b, a) == "right of"
    # a hand-made scene, drawn and read back: the oracle reports positions, not just words
    scene = Scene(
        (Shape("blue", "star", "large", 0.3, 0.7, 0.2), Shape("yellow", "square", "small", 0.75, 0.3, 0.13)),
        "gray",
    )
    read = read_scene(render(scene, 64))
    assert read.background == "gray" and len(read.shapes) == 2
    star, square = sorted(read.shapes, key=lambda s: s.kind != "star")
    assert (star.colour, star.kind, square.colour, square.kind) == ("blue", "star", "yellow", "square")
    assert abs(star.x - 0.3) < 0.02 and abs(star.y - 0.7) < 0.02 and abs(square.r - 0.13) < 0.01


def test_oracle_is_resolution_independent_and_tolerates_noise(drawn):
    items, images, _ = drawn
    g = torch.Generator().manual_seed(0)
    big = sum(matches(render(scene, 64), scene) for scene, _ in items[:100])
    # σ = 0.1 on [-1, 1] (5% of the range) moves pixels far more than a converged sampler leaves behind
    noisy = sum(
        matches((images[i] + 0.1 * torch.randn(images[i].shape, generator=g)).clamp(-1, 1), items[i][0])
        for i in range(200)
    )
    assert big >= 99 and noisy >= 196
    pil = Image.fromarray(
        ((images[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    )  # as a pipeline returns
    assert matches(pil, items[0][1]) and read_scene(pil) == read_scene(np.asarray(pil))


def test_pair_fraction_sets_how_many_scenes_hold_two_shapes():
    """0 and 1 give only singles or only pairs; the default draws about 60% pairs."""
    datasets = {p: ShapesDataset(length=100, pair_fraction=p) for p in (0.0, 1.0)}
    datasets[None] = ShapesDataset(length=100)
    counts = {p: sum(len(ds.scene(i).shapes) for i in range(100)) for p, ds in datasets.items()}
    assert counts[0.0] == 100 and counts[1.0] == 200 and 140 < counts[None] < 180


def test_bad_input():
    with pytest.raises(ValueError, match="heldout"):
        ShapesDataset(split="validation")
    with pytest.raises(ValueError, match="size"):
        ShapesDataset(size=8)
    with pytest.raises(ValueError, match="pair_fraction"):
        ShapesDataset(pair_fraction=1.5)
    with pytest.raises(ValueError, match="square RGB image"):
        read_scene(torch.zeros(3, 32, 16))
