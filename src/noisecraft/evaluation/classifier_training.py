"""Train a domain classifier (``classifier.py``) and check its feature space:

    python -m noisecraft.evaluation.classifier_training DOMAIN --out src/noisecraft/evaluation/weights/DOMAIN

prints the held-out accuracy, the wall time and the disturbance check (``evaluation.disturb``).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..components import save_component
from .classifier import DomainClassifier, DomainClassifierConfig
from .classifier_data import DOMAIN_CLASSES, DOMAIN_DATA, domain_groups
from .disturb import DEFAULT_LEVELS, disturbance_fids, rises_monotonically
from .features import DomainFeatures


def _random_shift(images: Tensor, pixels: int, generator: torch.Generator) -> Tensor:
    """Translate each image by up to ±pixels (edge-padded): generated digits are not always centred."""
    if pixels == 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (pixels,) * 4, mode="replicate")  # [B, C, H + 2p, W + 2p]
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, b), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None]  # [B, 1, H, 1]
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :]  # [B, 1, 1, W]
    batch = torch.arange(b)[:, None, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].squeeze(1).permute(0, 3, 1, 2)


def _random_noise(images: Tensor, max_std: float, generator: torch.Generator) -> Tensor:
    """Add Gaussian noise of a per-image std drawn uniformly from [0, max_std], as a sampler's last
    steps might leave; features trained on it move smoothly as images degrade."""
    if max_std == 0:
        return images
    std = torch.rand(len(images), 1, 1, 1, generator=generator) * max_std  # [B, 1, 1, 1]
    return images + std * torch.randn(images.shape, generator=generator)


def train_domain_classifier(
    images: Tensor,
    labels: Tensor,
    class_names: tuple[str, ...] | list[str],
    *,
    config: DomainClassifierConfig | None = None,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 3e-3,
    shift: int = 2,
    noise: float = 0.0,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> DomainClassifier:
    """Train with AdamW and a cosine-decayed learning rate on images [N, C, H, W] in [-1, 1], labels [N]
    (with ``config.groups``: [N, G], one class per group), each batch shifted by up to ``shift`` pixels
    and noised up to std ``noise``."""
    if images.ndim != 4 or labels.shape[:1] != images.shape[:1] or labels.ndim not in (1, 2):
        raise ValueError(
            f"need images [N, C, H, W] and labels [N] or [N, G], got {images.shape} and {labels.shape}"
        )
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs}, {batch_size}")
    config = config or DomainClassifierConfig(
        in_channels=images.shape[1],
        image_size=images.shape[-1],
        num_classes=len(class_names),
        class_names=tuple(class_names),
    )
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # parameter initialisation
    model = DomainClassifier(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(labels) / batch_size)
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total))
    )
    bar = tqdm(total=total, desc="train classifier", disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), batch_size):
            index = order[start : start + batch_size]
            x = _random_noise(_random_shift(images[index].float(), shift, generator), noise, generator)
            loss = grouped_cross_entropy(model(x), labels[index], config.groups)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return model.eval()


def grouped_cross_entropy(logits: Tensor, labels: Tensor, groups: tuple[int, ...] = ()) -> Tensor:
    """Cross-entropy of logits [B, K] against labels [B]; with ``groups``, the sum over the groups of
    each group's cross-entropy against its column of labels [B, G]."""
    if not groups:
        return F.cross_entropy(logits, labels)
    if labels.ndim != 2 or labels.shape[1] != len(groups):
        raise ValueError(f"{len(groups)} label groups need labels [B, {len(groups)}], got {labels.shape}")
    chunks = logits.split(groups, 1)
    return sum(F.cross_entropy(chunk, labels[:, g]) for g, chunk in enumerate(chunks))


@torch.no_grad()
def _correct(model: DomainClassifier, images: Tensor, labels: Tensor, batch_size: int) -> Tensor:
    """Whether each prediction is right, [N] (with groups: [N, G])."""
    predicted = [model.predict(chunk.float()) for chunk in images.split(batch_size)]
    return torch.cat(predicted) == labels


def classifier_accuracy(
    model: DomainClassifier, images: Tensor, labels: Tensor, batch_size: int = 500
) -> float:
    """Fraction of images whose arg-max class is the label (with groups: right in every group)."""
    correct = _correct(model, images, labels, batch_size)
    return float(correct.reshape(len(labels), -1).all(1).double().mean())


def group_accuracies(
    model: DomainClassifier, images: Tensor, labels: Tensor, batch_size: int = 500
) -> list[float]:
    """The fraction right in each group of a grouped classifier, in group order."""
    correct = _correct(model, images, labels, batch_size).reshape(len(labels), -1)
    return correct.double().mean(0).tolist()


@dataclass(frozen=True)
class DomainRecipe:
    """How a domain's shipped classifier was trained (``train_domain_classifier``'s knobs)."""

    epochs: int  # passes over the training arrays
    lr: float  # AdamW's peak learning rate
    noise: float = 0.0  # largest std of the added Gaussian noise
    weight_decay: float = 0.0
    dense_features: bool = False
    size: int = 32  # the image side it learns at
    widths: tuple[int, ...] = (16, 32, 64)  # one conv + pool each: 4 keep a 64-px net under 1 MB


# Emoji: 1,899 classes of one image each need many passes, and at 3e-3 the features die (every ReLU
# off: the loss sticks at ln 1,899). Noise up to 0.1 and dense features: 93% of shifted emoji
# identified against 85% without (benchmarks/RESULTS.md, "Feature agreement", 2026-12-02).
DOMAIN_RECIPES = {
    "mnist": DomainRecipe(epochs=3, lr=3e-3),
    "shapes": DomainRecipe(epochs=10, lr=3e-3),
    "emoji": DomainRecipe(epochs=120, lr=1e-3, noise=0.1, weight_decay=0.05, dense_features=True),
    # Tones: 64×64 spectrograms, six facts at once; noise as a sampler's last steps might leave.
    "tones": DomainRecipe(
        epochs=8, lr=3e-3, noise=0.1, dense_features=True, size=64, widths=(16, 32, 64, 64)
    ),
}


def main(argv: list[str] | None = None) -> None:
    """Train and save a domain classifier; print its held-out accuracy, the wall time and its
    disturbance check (``evaluation.disturb``: FID must rise with every disturbance's strength)."""
    parser = argparse.ArgumentParser(description="train a domain classifier for fast evaluation features")
    parser.add_argument("domain", choices=sorted(DOMAIN_DATA))
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=None, help="default: the domain's recipe")
    parser.add_argument("--size", type=int, default=None, help="default: the domain's recipe")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = DOMAIN_RECIPES[args.domain]
    size = args.size or recipe.size
    images, labels = DOMAIN_DATA[args.domain]("train", size)
    classes = DOMAIN_CLASSES[args.domain]()
    config = DomainClassifierConfig(
        images.shape[1], size, len(classes), recipe.widths, class_names=classes,
        dense_features=recipe.dense_features, groups=domain_groups(args.domain),
    )  # fmt: skip
    epochs = args.epochs or recipe.epochs
    start = time.perf_counter()
    model = train_domain_classifier(
        images,
        labels,
        classes,
        config=config,
        epochs=epochs,
        lr=recipe.lr,
        noise=recipe.noise,
        weight_decay=recipe.weight_decay,
        seed=args.seed,
    )
    seconds = time.perf_counter() - start
    test_images, test_labels = DOMAIN_DATA[args.domain]("test", size)
    accuracy = classifier_accuracy(model, test_images, test_labels)
    save_component(model, args.out)
    print(f"{args.domain}: test accuracy {accuracy:.4f}, {epochs} epochs in {seconds:.0f} s → {args.out}")
    if config.groups:
        names = [name.split("=")[0] for name in classes]
        firsts = [names[sum(config.groups[:g])] for g in range(len(config.groups))]
        scores = group_accuracies(model, test_images, test_labels)
        print("  per fact: " + ", ".join(f"{n} {a:.4f}" for n, a in zip(firsts, scores)))
    _print_disturbance_check(model, args.domain, test_images[:1000])


def _print_disturbance_check(model: DomainClassifier, domain: str, images: Tensor) -> None:
    """FID of disturbed test images in the new feature space, per kind, and whether each curve rises."""
    curves = disturbance_fids(DomainFeatures(model, domain), images)
    for kind, curve in curves.items():
        levels = ", ".join(f"{level:g}: {fid:.2f}" for level, fid in zip(DEFAULT_LEVELS[kind], curve))
        print(f"  FID under {kind} ({levels})")
    verdict = "rises with every disturbance" if rises_monotonically(curves) else "does NOT rise monotonically"
    print(f"disturbance check: FID {verdict}")


if __name__ == "__main__":
    main()
