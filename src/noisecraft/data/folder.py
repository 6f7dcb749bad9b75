"""A directory of images with captions, in either of two conventions.

- ``metadata.jsonl`` at the root (the Hugging Face imagefolder convention): one JSON object per line
  with ``file_name`` (relative to the root) and a caption column (``text`` by default); only the
  listed images are used.
- otherwise every image under the root (recursively) with a ``.txt`` of the same stem beside it.

Images are resized so the shorter side is ``size``, centre-cropped, and optionally flipped left-right
(a coin per item from (seed, index, epoch)). Corrupt images are not skipped: reading one raises a
ValueError naming the file, because silently dropping data changes what a model learns and hides
a broken copy; run ``FolderDataset.check()`` once to list every unreadable file up front.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .common import IMAGE_EXTENSIONS, decode_rgb, fit_square, item_generator, to_tensor


def read_metadata(root: Path, caption_column: str = "text") -> list[tuple[Path, str]]:
    """(image path, caption) pairs from ``root/metadata.jsonl``; ValueError naming a bad line or file."""
    pairs = []
    meta = root / "metadata.jsonl"
    for number, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{meta}:{number}: not valid JSON ({err})") from err
        if not isinstance(record, dict) or "file_name" not in record or caption_column not in record:
            raise ValueError(f"{meta}:{number}: need keys 'file_name' and {caption_column!r}")
        path = root / record["file_name"]
        if not path.is_file():
            raise ValueError(f"{meta}:{number}: image {path} does not exist")
        pairs.append((path, str(record[caption_column])))
    return pairs


def read_txt_captions(root: Path) -> list[tuple[Path, str]]:
    """(image path, caption) for every image under root, caption from the ``.txt`` beside it."""
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    missing = [p for p in images if not p.with_suffix(".txt").is_file()]
    if missing:
        raise ValueError(
            f"{len(missing)} image(s) in {root} have no caption (no metadata.jsonl, and no .txt beside "
            f"them), e.g. {missing[0]}"
        )
    return [(p, p.with_suffix(".txt").read_text(encoding="utf-8").strip()) for p in images]


class FolderDataset(Dataset):
    """Images with captions from a folder: item i is (image [3, size, size] in [-1, 1], caption)."""

    def __init__(
        self,
        root: str | Path,
        size: int = 32,
        flip: bool = False,
        seed: int = 0,
        caption_column: str = "text",
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"image folder {self.root} does not exist or is not a directory")
        if size < 1:
            raise ValueError(f"need size ≥ 1, got {size}")
        if (self.root / "metadata.jsonl").is_file():
            self.items = read_metadata(self.root, caption_column)
        else:
            self.items = read_txt_captions(self.root)
        if not self.items:
            raise ValueError(
                f"no captioned images in {self.root} (extensions: {', '.join(IMAGE_EXTENSIONS)})"
            )
        self.size, self.flip, self.seed, self.epoch = size, flip, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Flips are drawn from (seed, index, epoch): call once per epoch for fresh flips."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        path, caption = self.items[index]
        image = to_tensor(fit_square(decode_rgb(path), self.size))  # [3, size, size]
        if self.flip and torch.rand((), generator=item_generator(self.seed, index, self.epoch)) < 0.5:
            image = image.flip(-1)
        return image, caption

    @property
    def captions(self) -> list[str]:
        return sorted({caption for _, caption in self.items})

    def check(self) -> list[Path]:
        """Every image that cannot be decoded (empty when the folder is clean); reads every file."""
        bad = []
        for path, _ in self.items:
            try:
                decode_rgb(path)
            except ValueError:
                bad.append(path)
        return bad
