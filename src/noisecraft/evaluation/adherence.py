"""Prompt adherence: does a generated image show what its prompt asked for?

- shapes: the rule-based oracle (``data.shapes_oracle.matches``) reads the picture back and checks
  every fact the caption states (colours, kinds, sizes, position / relation, background). Prompts
  are captions of the **held-out** split, whose colour×kind pairs never occur in training, so the
  score measures composition rather than memorised captions.
- MNIST: the shipped domain classifier's arg-max must be the prompted digit.
- emoji: retrieval accuracy. Each generated image is compared with every training emoji rendered
  at the model's resolution, by Euclidean distance in pixel space ([-1, 1] RGB values, flattened;
  deterministic and free of any learned model). top-1 is the fraction of images whose nearest
  training emoji is the prompted one; top-k, the fraction where it is among the k nearest.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..data.shapes_oracle import fact_checks, matches, parse_caption, read_scene
from .classifier import DomainClassifier


def shapes_oracle_accuracy(images: Tensor, captions: list[str]) -> float:
    """Fraction of images [B, 3, H, W] in [-1, 1] that satisfy their caption according to the oracle."""
    if len(images) != len(captions) or not captions:
        raise ValueError(f"need one caption per image, got {len(captions)} for {len(images)}")
    return sum(matches(image, caption) for image, caption in zip(images, captions)) / len(captions)


def shapes_fact_accuracy(images: Tensor, captions: list[str]) -> dict[str, float]:
    """Per caption fact (count, background, colour, kind, size, position, relation), the fraction
    of images [B, 3, H, W] that get it right, over the images whose caption states it (see
    ``shapes_oracle.fact_checks``: per-piece facts only where the count is right)."""
    if len(images) != len(captions) or not captions:
        raise ValueError(f"need one caption per image, got {len(captions)} for {len(images)}")
    right: dict[str, list[bool]] = {}
    for image, caption in zip(images, captions):
        for fact, ok in fact_checks(read_scene(image), parse_caption(caption)).items():
            right.setdefault(fact, []).append(ok)
    return {fact: sum(oks) / len(oks) for fact, oks in right.items()}


def heldout_shapes_captions(num: int, size: int = 32, seed: int = 0) -> list[str]:
    """The first ``num`` captions of the held-out shapes split (no rendering needed)."""
    from ..data.shapes import ShapesDataset

    heldout = ShapesDataset(size=size, length=max(num, 1), seed=seed, split="heldout")
    return [heldout.scene_and_caption(i)[1] for i in range(num)]


@torch.no_grad()
def class_accuracy(
    images: Tensor, labels: Tensor, classifier: DomainClassifier, batch_size: int = 500
) -> float:
    """Fraction of images [B, C, H, W] whose predicted class is the prompted label [B]."""
    if len(images) != len(labels) or len(labels) == 0:
        raise ValueError(f"need one label per image, got {len(labels)} for {len(images)}")
    predicted = torch.cat([classifier(chunk.float()).argmax(1) for chunk in images.split(batch_size)])
    return float((predicted == labels.to(predicted.device)).double().mean())


@torch.no_grad()
def retrieval_accuracy(
    images: Tensor, targets: Tensor, gallery: Tensor, ks: tuple[int, ...] = (1, 5), chunk: int = 256
) -> dict[int, float]:
    """k → fraction of images [B, ...] whose target gallery index [B] is among their k nearest
    gallery images [N, ...] (Euclidean distance over all pixels)."""
    if len(images) != len(targets) or len(targets) == 0:
        raise ValueError(f"need one target per image, got {len(targets)} for {len(images)}")
    if images.shape[1:] != gallery.shape[1:]:
        raise ValueError(f"images {tuple(images.shape[1:])} and gallery {tuple(gallery.shape[1:])} differ")
    flat_gallery = gallery.reshape(len(gallery), -1).double()  # [N, P]
    ranks = []
    for rows, want in zip(images.split(chunk), targets.split(chunk)):
        distances = torch.cdist(rows.reshape(len(rows), -1).double(), flat_gallery)  # [b, N]
        target_distance = distances.gather(1, want[:, None].long())  # [b, 1]
        ranks.append((distances < target_distance).sum(1))  # how many are strictly nearer (ties favour it)
    rank = torch.cat(ranks)
    return {k: float((rank < k).double().mean()) for k in ks}
