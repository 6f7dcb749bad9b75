"""A small CNN classifier per domain: fast FID features and class accuracy.

MNIST: the digit; shapes: colour and kind of a scene's largest shape (24 classes); emoji: which of
the 1,899, one class each, learnt from its single image under random shifts and added noise. The
emoji features are taken before the last ReLU (``dense_features``): with ReLU'd features and no
noise they were ≈ 93% zeros, and an earlier such classifier ranked two emoji models backwards.
``python -m noisecraft.evaluation.classifier`` prints a disturbance check of the new space
(``evaluation.disturb``), and ``benchmarks/feature_agreement.py`` compares its FIDs with Inception's.

InceptionV3 costs ~6 GFLOP per image; this network ~5 MFLOP, so FID curves during training and
the prompted-class accuracy of a digit model take seconds on a CPU. Its penultimate activations
(``features``) play the role of Inception's pool features. Scores in this space are comparable
only with scores from the same weights: the cache key of reference statistics includes their hash.

A classifier is a registered component (config JSON + safetensors). The shipped ones live in
``weights/<name>/`` beside this file and are rebuilt with (DOMAIN = mnist, shapes or emoji)

    python -m noisecraft.evaluation.classifier DOMAIN --out src/noisecraft/evaluation/weights/DOMAIN
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..components import ComponentError, load_component, register_component, save_component

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass
class DomainClassifierConfig:
    in_channels: int = 1
    image_size: int = 32  # the size it was trained at; other sizes are resized to it
    num_classes: int = 10
    widths: tuple[int, ...] = (16, 32, 64)  # one 3×3 conv + 2× max-pool per entry
    feature_dim: int = 128  # width of the penultimate layer = the feature space
    class_names: tuple[str, ...] = ()
    # Features taken before the penultimate ReLU: dense, where the ReLU'd ones of a 1,899-class
    # emoji net were ≈ 93% zeros. The logits are computed from the ReLU'd features either way.
    dense_features: bool = False

    def __post_init__(self) -> None:
        if min(self.in_channels, self.image_size, self.num_classes, self.feature_dim, *self.widths) <= 0:
            raise ValueError(f"every size in the classifier config must be positive, got {self}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")


@register_component("domain_classifier")
class DomainClassifier(nn.Module):
    """conv-BN-ReLU-pool per width → flatten → Linear-ReLU (features) → Linear (logits).

    With ``dense_features`` the features are the Linear's output before its ReLU.
    """

    config_class = DomainClassifierConfig

    def __init__(self, config: DomainClassifierConfig):
        super().__init__()
        self.config = config
        layers, c_in = [], config.in_channels
        for width in config.widths:
            layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            layers.append(nn.MaxPool2d(2))
            c_in = width
        self.body = nn.Sequential(*layers)
        side = config.image_size // 2 ** len(config.widths)  # spatial side after the poolings
        if side < 1:
            raise ValueError(f"{len(config.widths)} poolings leave nothing of a {config.image_size}px image")
        # Flatten, not global-average: where a stroke is matters for telling digits apart.
        self.embed = nn.Linear(c_in * side * side, config.feature_dim)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def _fit(self, images: Tensor) -> Tensor:
        """Check channels and resize to the training size (bilinear, antialiased when shrinking)."""
        c = self.config
        if images.ndim != 4 or images.shape[1] != c.in_channels:
            raise ValueError(
                f"classifier expects [B, {c.in_channels}, H, W] images, got shape {tuple(images.shape)}"
            )
        if images.shape[-2:] != (c.image_size, c.image_size):
            size = (c.image_size, c.image_size)
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        return images

    def features(self, images: Tensor) -> Tensor:
        """Penultimate activations [B, feature_dim] of images [B, C, H, W] in [-1, 1]."""
        h = self.body(self._fit(images)).flatten(1)  # [B, widths[-1] · side²]
        h = self.embed(h)  # [B, feature_dim]
        return h if self.config.dense_features else F.relu(h)

    def forward(self, images: Tensor) -> Tensor:
        """Class logits [B, num_classes]."""
        return self.head(F.relu(self.features(images)))

    @property
    def weights_hash(self) -> str:
        """First 12 hex digits of a SHA-256 over the weights: names the feature space in cache keys."""
        digest = hashlib.sha256()
        for key, value in sorted(self.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:12]


def shipped_classifiers() -> list[str]:
    """Domains with a classifier inside the package."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / "config.json").is_file())


def load_domain_classifier(name_or_path: str | Path) -> DomainClassifier:
    """A shipped classifier by domain name (``shipped_classifiers()``) or a saved folder."""
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        if str(name_or_path) not in shipped_classifiers():
            shipped = ", ".join(shipped_classifiers()) or "none"
            raise ValueError(
                f"no domain classifier for {str(name_or_path)!r} (shipped: {shipped}); train one with "
                "`python -m noisecraft.evaluation.classifier` or use --features inception"
            )
        path = WEIGHTS_DIR / str(name_or_path)
    try:
        return load_component(path, DomainClassifier)
    except ComponentError as err:
        raise ValueError(str(err)) from None


# ----------------------------------------------------------------------------------------------
# Training


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
    """Train with AdamW and a cosine-decayed learning rate on images [N, C, H, W] in [-1, 1], labels [N],
    each batch shifted by up to ``shift`` pixels and noised up to std ``noise``."""
    if images.ndim != 4 or labels.shape != images.shape[:1]:
        raise ValueError(f"need images [N, C, H, W] and labels [N], got {images.shape} and {labels.shape}")
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
            loss = F.cross_entropy(model(x), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return model.eval()


@torch.no_grad()
def classifier_accuracy(
    model: DomainClassifier, images: Tensor, labels: Tensor, batch_size: int = 500
) -> float:
    """Fraction of images whose arg-max class is the label."""
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(images[start : start + batch_size].float())
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(labels)


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


DOMAIN_DATA = {"mnist": mnist_arrays, "shapes": shapes_arrays, "emoji": emoji_arrays}
DOMAIN_CLASSES = {
    "mnist": lambda: tuple(str(d) for d in range(10)),
    "shapes": shapes_classes,
    "emoji": emoji_classes,
}


@dataclass(frozen=True)
class DomainRecipe:
    """How a domain's shipped classifier was trained (``train_domain_classifier``'s knobs)."""

    epochs: int  # passes over the training arrays
    lr: float  # AdamW's peak learning rate
    noise: float = 0.0  # largest std of the added Gaussian noise
    weight_decay: float = 0.0
    dense_features: bool = False


# Emoji: 1,899 classes of one image each need many passes, and at 3e-3 the features die (every ReLU
# off: the loss sticks at ln 1,899). Noise up to 0.1 and dense features: 93% of shifted emoji
# identified against 85% without (benchmarks/RESULTS.md, "Feature agreement", 2026-12-02).
DOMAIN_RECIPES = {
    "mnist": DomainRecipe(epochs=3, lr=3e-3),
    "shapes": DomainRecipe(epochs=10, lr=3e-3),
    "emoji": DomainRecipe(epochs=120, lr=1e-3, noise=0.1, weight_decay=0.05, dense_features=True),
}


def main(argv: list[str] | None = None) -> None:
    """Train and save a domain classifier; print its held-out accuracy, the wall time and its
    disturbance check (``evaluation.disturb``: FID must rise with every disturbance's strength)."""
    parser = argparse.ArgumentParser(description="train a domain classifier for fast evaluation features")
    parser.add_argument("domain", choices=sorted(DOMAIN_DATA))
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=None, help="default: the domain's recipe")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = DOMAIN_RECIPES[args.domain]
    images, labels = DOMAIN_DATA[args.domain]("train", args.size)
    classes = DOMAIN_CLASSES[args.domain]()
    config = DomainClassifierConfig(
        images.shape[1], args.size, len(classes), class_names=classes, dense_features=recipe.dense_features
    )
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
    test_images, test_labels = DOMAIN_DATA[args.domain]("test", args.size)
    accuracy = classifier_accuracy(model, test_images, test_labels)
    save_component(model, args.out)
    print(f"{args.domain}: test accuracy {accuracy:.4f}, {epochs} epochs in {seconds:.0f} s → {args.out}")
    _print_disturbance_check(model, args.domain, test_images[:1000])


def _print_disturbance_check(model: DomainClassifier, domain: str, images: Tensor) -> None:
    """FID of disturbed test images in the new feature space, per kind, and whether each curve rises."""
    from .disturb import DEFAULT_LEVELS, disturbance_fids, rises_monotonically
    from .features import DomainFeatures

    curves = disturbance_fids(DomainFeatures(model, domain), images)
    for kind, curve in curves.items():
        levels = ", ".join(f"{level:g}: {fid:.2f}" for level, fid in zip(DEFAULT_LEVELS[kind], curve))
        print(f"  FID under {kind} ({levels})")
    verdict = "rises with every disturbance" if rises_monotonically(curves) else "does NOT rise monotonically"
    print(f"disturbance check: FID {verdict}")


if __name__ == "__main__":
    main()
