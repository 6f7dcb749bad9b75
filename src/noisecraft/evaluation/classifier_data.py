"""The labelled image arrays the domain classifiers learn from, one loader per domain."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mnist_arrays(split: str, size: int = 32) -> tuple[Tensor, Tensor]:
    """A whole MNIST split: images [N, 1, size, size] in [-1, 1] drawn as the dataset does, labels [N]."""
    from ..data.mnist import MNISTDataset

    dataset = MNISTDataset(split=split, size=size, caption_variants=False)
    images = dataset.images.float()[:, None] / 127.5 - 1  # [N, 1, 28, 28]
    if size == 32:
        images = F.pad(images, (2, 2, 2, 2), value=-1.0)
    elif size != 28:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    return images, dataset.labels.long()


def shapes_classes() -> tuple[str, ...]:
    """ "colour kind" for every pair of the shapes palette: 6 × 4 = 24 classes."""
    from ..data.shapes import COLOURS, KINDS

    return tuple(f"{colour} {kind}" for colour in COLOURS for kind in KINDS)


def shapes_arrays(split: str, size: int = 32) -> tuple[Tensor, Tensor]:
    """Scenes [N, 3, size, size] labelled by the colour and kind of their largest shape, [N].

    Half come from each of the dataset's splits, so all 24 pairs occur; "train" and "test" are drawn
    with seeds the diffusion recipes do not use, so neither holds a scene a shapes model trained on.
    """
    from ..data.shapes import ShapesDataset, render

    seed, length = {"train": (101, 12_000), "test": (102, 2_000)}[split]
    classes = shapes_classes()
    images, labels = [], []
    for data_split in ("train", "heldout"):
        data = ShapesDataset(size, length // 2, seed, data_split)
        for index in range(len(data)):
            scene = data.scene(index)
            largest = max(scene.shapes, key=lambda shape: shape.r)
            images.append(render(scene, size))  # [3, size, size]
            labels.append(classes.index(f"{largest.colour} {largest.kind}"))
    return torch.stack(images), torch.tensor(labels)


def emoji_classes() -> tuple[str, ...]:
    """Every emoji's main name, in the dataset's order: one class per emoji."""
    from ..data.emoji import EmojiDataset

    return tuple(entry.name for entry in EmojiDataset(caption_variants=False).entries)


def emoji_arrays(split: str, size: int = 32) -> tuple[Tensor, Tensor]:
    """Every emoji once [N, 3, size, size], labelled by its index [N]. There is no held-out emoji:
    "test" is the same images, seen in training only under random shifts of up to 2 pixels."""
    from ..data.emoji import EmojiDataset

    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}")
    data = EmojiDataset(size=size, caption_variants=False)
    return torch.stack([data[i][0] for i in range(len(data))]), torch.arange(len(data))


def _tones_sounds() -> tuple[str, ...]:
    """Every sound a part can be: a timbre at a pitch register, a drum, a sweep up or down (15)."""
    from ..data.tones import KINDS, PITCHES

    pitched = [f"{kind} {pitch}" for kind in KINDS if kind not in ("drum", "sweep") for pitch in PITCHES]
    return (*pitched, "drum", "sweep rising", "sweep falling")


def tones_facts() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The facts the tones classifier reads, each with its values: one softmax group per fact."""
    sounds = _tones_sounds()
    return (
        ("loudness", ("loud", "soft")),
        ("parts", ("1", "2")),
        ("first", sounds),
        ("second", ("none", *sounds)),
        ("chord", ("no", "yes")),
        ("hits", ("1", "2", "3", "4")),
    )


def tones_classes() -> tuple[str, ...]:
    """ "fact=value" for every value of every fact (33 logits in 6 groups)."""
    return tuple(f"{fact}={value}" for fact, values in tones_facts() for value in values)


def tones_labels(clip) -> list[int]:
    """A clip's value index for each fact of ``tones_facts`` (hits: how often the first part sounds)."""
    facts = dict(tones_facts())

    def sound(part) -> str:
        return f"{part.kind} {part.pitch or part.direction}" if part.kind != "drum" else "drum"

    second = sound(clip.parts[1]) if len(clip.parts) > 1 else "none"
    values = (clip.loudness, str(len(clip.parts)), sound(clip.parts[0]), second,
              "yes" if any(p.chord for p in clip.parts) else "no", str(clip.parts[0].count))  # fmt: skip
    return [facts[fact].index(value) for fact, value in zip(facts, values)]


def tones_arrays(split: str, size: int = 64) -> tuple[Tensor, Tensor]:
    """Spectrograms [N, 1, 64, 64] of clips and their facts [N, 6] (``tones_labels``). Half come from
    each of the dataset's splits, so the held-out pairs occur too; drawn with seeds the diffusion
    recipes do not use (train 101: 6,000 clips; test 102: 1,500)."""
    from ..data.tones import TonesDataset

    seed, length = {"train": (101, 6_000), "test": (102, 1_500)}[split]
    images, labels = [], []
    for data_split in ("train", "heldout"):
        data = TonesDataset(size, length // 2, seed, data_split)
        for index in range(len(data)):
            image, _ = data[index]
            images.append(image)
            labels.append(tones_labels(data.clip_and_caption(index)[0]))
    return torch.stack(images), torch.tensor(labels)


def domain_groups(domain: str) -> tuple[int, ...]:
    """The sizes of a domain's softmax groups; () for one softmax over all classes."""
    return tuple(len(values) for _, values in tones_facts()) if domain == "tones" else ()


DOMAIN_DATA = {"mnist": mnist_arrays, "shapes": shapes_arrays, "emoji": emoji_arrays, "tones": tones_arrays}
DOMAIN_CLASSES = {
    "mnist": lambda: tuple(str(d) for d in range(10)),
    "shapes": shapes_classes,
    "emoji": emoji_classes,
    "tones": tones_classes,
}
