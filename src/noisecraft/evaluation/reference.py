"""Reference features of a dataset, computed once per (dataset, split, size, feature space) and cached.

FID needs the reference mean and covariance; KID and precision/recall need the reference features
themselves, so the cache keeps all three in one safetensors file:

    <cache>/reference/<dataset>-<split>-<size>px-n<num>-<feature name>[-<options hash>].safetensors

``<cache>`` is ``cache_dir``, else ``$NOISECRAFT_CACHE``, else ``~/.cache/noisecraft``. The feature
name of a domain classifier includes its weights' hash, so retraining it never reuses stale numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset
from tqdm.auto import tqdm

from ..data import dataset_options, make_dataset
from .features import FeatureExtractor
from .metrics import gaussian_stats


@dataclass
class Reference:
    features: Tensor  # [N, D] float32
    mean: Tensor  # [D] float64
    cov: Tensor  # [D, D] float64
    path: Path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: the argument, else $NOISECRAFT_CACHE, else ~/.cache/noisecraft."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("NOISECRAFT_CACHE", Path.home() / ".cache" / "noisecraft"))


def build_dataset(name: str, size: int, split: str | None, options: dict | None = None) -> Dataset:
    """``make_dataset`` at ``size``, with ``split`` when the dataset has splits (emoji has none)."""
    options = dict(options or {})
    options.setdefault("size", size)
    if split is not None and "split" in dataset_options(name):
        options.setdefault("split", split)
    return make_dataset(name, **options)


def pick_indices(length: int, num: int, seed: int) -> list[int]:
    """``num`` item indices: a seeded random subset, cycling through a permutation when num > length."""
    order = torch.randperm(length, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i % length] for i in range(num)]


def dataset_images(dataset: Dataset | IterableDataset, num: int, seed: int = 0) -> tuple[Tensor, list[str]]:
    """Up to ``num`` distinct (image, caption) items: a seeded subset, or the first ``num`` of a stream."""
    if isinstance(dataset, IterableDataset):
        items = []
        for item in dataset:
            items.append(item)
            if len(items) == num:
                break
    else:
        items = [dataset[i] for i in pick_indices(len(dataset), min(num, len(dataset)), seed)]
    if not items:
        raise ValueError("the reference dataset is empty")
    return torch.stack([image for image, _ in items]), [caption for _, caption in items]


def _cache_path(
    root: Path, name: str, split: str | None, size: int, num: int, features: str, options
) -> Path:
    key = f"{name}-{split or 'all'}-{size}px-n{num}-{features}"
    extra = {k: v for k, v in (options or {}).items() if k not in ("size", "split")}
    if extra:
        blob = json.dumps(extra, sort_keys=True, default=str).encode()
        key += "-" + hashlib.sha256(blob).hexdigest()[:10]
    return root / "reference" / f"{key}.safetensors"


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor, images: Tensor, batch_size: int = 100, desc: str = "features", progress=True
) -> Tensor:
    """Features [N, D] of images [N, C, H, W], batch by batch with a progress bar."""
    features = []
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for chunk in images.split(batch_size):
            features.append(extractor(chunk))
            bar.update(len(chunk))
    return torch.cat(features)


def reference_features(
    name: str,
    extractor: FeatureExtractor,
    *,
    size: int,
    num: int,
    split: str | None = "train",
    options: dict | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Reference:
    """The reference features and Gaussian statistics of a dataset, from the cache or computed and stored."""
    if "split" not in dataset_options(name):
        split = None
    path = _cache_path(cache_root(cache_dir), name, split, size, num, extractor.name, options)
    cached = _read_cache(path) if path.is_file() else None
    if cached is not None:
        return cached
    dataset = build_dataset(name, size, split, options)
    images, _ = dataset_images(dataset, num, seed)
    features = extract_features(extractor, images, desc=f"reference {name}", progress=progress).float()
    mean, cov = gaussian_stats(features)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    meta = {"dataset": name, "split": str(split), "size": str(size), "features": extractor.name}
    save_file({"features": features.contiguous(), "mean": mean, "cov": cov}, str(tmp), metadata=meta)
    os.replace(tmp, path)  # atomic: a concurrent run never reads half a file
    return Reference(features, mean, cov, path)


def _read_cache(path: Path) -> Reference | None:
    """A cached reference file, or None (with a warning, so it is recomputed) when it is damaged."""
    try:
        stored = load_file(path)
        features, mean, cov = stored["features"], stored["mean"], stored["cov"]
        dim = features.shape[-1]
        if features.ndim != 2 or mean.shape != (dim,) or cov.shape != (dim, dim):
            raise ValueError(f"shapes {[tuple(t.shape) for t in (features, mean, cov)]}")
    except Exception as err:  # safetensors raises several types for corrupt files; KeyError, ValueError
        warnings.warn(f"recomputing the damaged reference cache {path} ({err})", stacklevel=3)
        return None
    return Reference(features, mean, cov, path)
