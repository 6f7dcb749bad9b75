"""A small CNN classifier per domain: fast FID features and class accuracy.

MNIST: the digit; shapes: colour and kind of a scene's largest shape (24 classes); emoji: which of
the 1,899, one class each, learnt from its single image under random shifts and added noise;
tones: every fact a caption states of a clip's spectrogram, one softmax per fact (``groups``). The
emoji features are taken before the last ReLU (``dense_features``): with ReLU'd features and no
noise they were ≈ 93% zeros, and an earlier such classifier ranked two emoji models backwards.
``python -m noisecraft.evaluation.classifier_training`` prints a disturbance check of the new space
(``evaluation.disturb``), and ``benchmarks/feature_agreement.py`` compares its FIDs with Inception's.

InceptionV3 costs ~6 GFLOP per image; this network ~5 MFLOP, so FID curves during training and
the prompted-class accuracy of a digit model take seconds on a CPU. Its penultimate activations
(``features``) play the role of Inception's pool features. Scores in this space are comparable
only with scores from the same weights: the cache key of reference statistics includes their hash.

A classifier is a registered component (config JSON + safetensors). The shipped ones live in
``weights/<name>/`` beside this file and are rebuilt with (DOMAIN = mnist, shapes or emoji)

    python -m noisecraft.evaluation.classifier_training DOMAIN --out src/noisecraft/evaluation/weights/DOMAIN
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..components import ComponentError, load_component, register_component

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
    # Several facts at once: the logits split into groups of these sizes (summing to num_classes),
    # one softmax each (tones: loudness, parts, first sound, ...). Empty: one softmax over all.
    groups: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if min(self.in_channels, self.image_size, self.num_classes, self.feature_dim, *self.widths) <= 0:
            raise ValueError(f"every size in the classifier config must be positive, got {self}")
        if self.groups and (min(self.groups) <= 0 or sum(self.groups) != self.num_classes):
            raise ValueError(f"groups {self.groups} must be positive and sum to {self.num_classes} classes")
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
        """Class logits [B, num_classes] (with ``groups``: each group's logits side by side)."""
        return self.head(F.relu(self.features(images)))

    def predict(self, images: Tensor) -> Tensor:
        """The arg-max class [B], or with ``groups`` the arg-max within each group [B, G]."""
        logits = self(images)  # [B, num_classes]
        if not self.config.groups:
            return logits.argmax(1)
        return torch.stack([chunk.argmax(1) for chunk in logits.split(self.config.groups, 1)], 1)

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
                "`python -m noisecraft.evaluation.classifier_training` or use --features inception"
            )
        path = WEIGHTS_DIR / str(name_or_path)
    try:
        return load_component(path, DomainClassifier)
    except ComponentError as err:
        raise ValueError(str(err)) from None
