"""A finite dataset rendered once into a memory-mapped file, reused by every later run.

The file is a plain safetensors file (8-byte header length, JSON header, data) holding

- ``images`` [N, *shape]: the dataset's examples, bit for bit as ``dataset[i][0]`` returns them;
- ``captions`` [N] int32, only for a dataset whose captions do not change with the epoch (one
  without ``set_epoch``): indices into the sorted distinct captions kept in the metadata. Other
  datasets' captions are drawn by the dataset itself (``dataset.caption(i)``), which is cheap;

and in ``__metadata__`` the key it was written for and a CRC-32 of its data. Its name is
``<dataset>-<hash of the key>.safetensors``; the key is the dataset's name, its length, its
``cache_params()`` (everything that decides its pixels, with a version of the drawing code) and
this file format's version, so any change of options or code gives another file.

It is written into a temporary file beside it and renamed into place only when complete and
synced: a killed build never leaves a half file under the final name (its temporary is removed by
the next build). Opening checks the header against the key and the checksum against the data; a
damaged or foreign file is reported in one line and rendered again. Nothing is pickled.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import zlib
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .loader import worker_items

FORMAT = 1
DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "U8": np.dtype("u1")}
CHUNK = 256  # examples a build worker renders per task
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit


class CacheError(ValueError):
    """A cache file that cannot be used: damaged, truncated, or written for other data."""


def shared_cache_dir() -> Path:
    """Where shared data caches live: $NOISECRAFT_CACHE/data, else ~/.cache/noisecraft/data (XDG)."""
    root = os.environ.get("NOISECRAFT_CACHE")
    if root:
        return Path(root) / "data"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "noisecraft" / "data"


def cache_key(name: str, dataset: Any) -> dict[str, Any]:
    """What decides a cache file's contents; ValueError for a dataset that cannot be cached."""
    if not hasattr(dataset, "cache_params"):
        raise ValueError(
            f"data.cache: the {name!r} dataset is not cached; it applies to shapes, emoji and mnist"
        )
    return {"dataset": name, "format": FORMAT, "length": len(dataset), **dataset.cache_params()}


def cache_file(folder: str | os.PathLike, key: dict[str, Any]) -> Path:
    digest = sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(folder) / f"{key['dataset']}-{digest}.safetensors"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cached(
    dataset: Any,
    name: str,
    folder: str | os.PathLike,
    *,
    workers: int = 0,
    log: Callable[[str], None] = _stderr,
) -> CachedDataset:
    """``dataset`` read from its cache file under ``folder``, rendered first (by ``workers`` processes)
    when the file is missing, damaged or foreign; ``log`` gets one line when it renders."""
    key = cache_key(name, dataset)
    path = cache_file(folder, key)
    if path.is_file():
        try:
            return CachedDataset(dataset, path, key)
        except CacheError as err:
            log(f"noisecraft: data cache {path} is unusable ({err}); rendering it again")
    else:
        log(f"noisecraft: rendering the {len(dataset)} examples of {name!r} once into {path}")
    try:
        build(dataset, key, path, workers)
    except OSError as err:  # a folder that cannot be written, a full disk
        raise ValueError(f"data.cache: cannot write {path}: {err}") from None
    return CachedDataset(dataset, path, key)


# ----------------------------------------------------------------------------------------------
# Writing.


class _Chunks(Dataset):
    """Chunk c: examples [c·CHUNK, (c+1)·CHUNK) as (images [n, *shape] numpy, captions)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / CHUNK)

    def __getitem__(self, c: int) -> tuple[np.ndarray, list[str]]:
        items = [self.dataset[i] for i in range(c * CHUNK, min((c + 1) * CHUNK, len(self.dataset)))]
        return torch.stack([x for x, _ in items]).numpy(), [caption for _, caption in items]


def _header(key: dict, dtype: str, shape: list[int], crc: int, captions: list[str] | None) -> bytes:
    """The file's header for this content: the same inputs always give the same bytes."""
    n, image_bytes = shape[0], math.prod(shape) * DTYPES[dtype].itemsize
    header: dict[str, Any] = {"images": {"dtype": dtype, "shape": shape, "data_offsets": [0, image_bytes]}}
    meta = {"noisecraft_cache": json.dumps(key, sort_keys=True), "crc32": str(crc)}
    if captions is not None:
        offsets = [image_bytes, image_bytes + 4 * n]
        header["captions"] = {"dtype": "I32", "shape": [n], "data_offsets": offsets}
        meta["caption_list"] = json.dumps(captions)
    header["__metadata__"] = meta
    raw = json.dumps(header, sort_keys=True).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors pads it
    return struct.pack("<Q", len(raw)) + raw


def _remove_stale(path: Path) -> None:
    """Delete temporaries of this file left by builds whose process is gone (killed mid-build)."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1].split(".")[0]
        try:
            os.kill(int(pid), 0)  # raises if no such process
        except (ValueError, ProcessLookupError):
            tmp.unlink(missing_ok=True)
        except PermissionError:  # alive, someone else's
            pass


def build(dataset: Any, key: dict[str, Any], path: Path, workers: int = 0) -> None:
    """Render every example of ``dataset`` into ``path``, atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    raw_path = path.with_name(f".{path.name}.tmp-{os.getpid()}.raw")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    keep_captions = not hasattr(dataset, "set_epoch")  # captions fixed: worth keeping
    try:
        chunks, crc, texts, first = _Chunks(dataset), 0, [], None
        with open(raw_path, "w+b") as raw:
            for images, captions in worker_items(chunks, range(len(chunks)), workers):
                images = np.ascontiguousarray(images)
                first = images if first is None else first
                raw.write(memoryview(images).cast("B"))
                crc = zlib.crc32(memoryview(images).cast("B"), crc)
                texts += captions if keep_captions else []
            dtype = next((name for name, d in DTYPES.items() if d == first.dtype.newbyteorder("<")), None)
            if dtype is None:
                raise ValueError(f"data.cache: examples of dtype {first.dtype} cannot be cached")
            caption_list = ids = None
            if keep_captions:
                caption_list = sorted(set(texts))
                lookup = {text: i for i, text in enumerate(caption_list)}
                ids = np.array([lookup[t] for t in texts], dtype="<i4")  # [N]
                crc = zlib.crc32(ids.tobytes(), crc)
            header = _header(key, dtype, [len(dataset), *first.shape[1:]], crc, caption_list)
            raw.seek(0)
            with open(tmp, "wb") as out:
                out.write(header)
                while block := raw.read(1 << 24):
                    out.write(block)
                if ids is not None:
                    out.write(ids.tobytes())
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, path)  # the commit point: atomic on POSIX (a rename lost to a power cut re-renders)
    finally:
        raw_path.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# Reading.


def _layout(path: Path, key: dict[str, Any]) -> dict[str, Any]:
    """Where the arrays lie in a cache file, after checking it is whole and written for ``key``."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        length = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
            raise CacheError("its header length is impossible: truncated, or not a cache file")
        try:
            header = json.loads(f.read(length))
            meta = header["__metadata__"]
            found_key, crc = meta["noisecraft_cache"], int(meta["crc32"])
            dtype, shape = header["images"]["dtype"], header["images"]["shape"]
            captions = json.loads(meta["caption_list"]) if "caption_list" in meta else None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
            raise CacheError("its header is not a noisecraft data cache's") from None
    if found_key != json.dumps(key, sort_keys=True):
        raise CacheError("it was written for other data or by another version")
    if dtype not in DTYPES or not isinstance(shape, list) or shape[:1] != [key["length"]]:
        raise CacheError("its images have an unexpected type or count")
    expected = _header(key, dtype, shape, crc, captions)
    start = len(expected)
    image_bytes = math.prod(shape) * DTYPES[dtype].itemsize
    data_bytes = image_bytes + (4 * shape[0] if captions is not None else 0)
    with open(path, "rb") as f:
        if f.read(start) != expected or size != start + data_bytes:
            raise CacheError("its header or size does not match its contents (truncated?)")
    if data_bytes and zlib.crc32(np.memmap(path, np.uint8, "r", offset=start, shape=(data_bytes,))) != crc:
        raise CacheError("its data does not match its checksum")
    return {"dtype": DTYPES[dtype], "shape": tuple(shape), "start": start, "captions": captions,
            "captions_at": start + image_bytes}  # fmt: skip


class CachedDataset(Dataset):
    """The examples of ``base`` read from its checked cache file (memory-mapped); captions from the
    file when they are fixed, else from ``base.caption(i)`` for the epoch ``set_epoch`` gave."""

    def __init__(self, base: Any, path: Path, key: dict[str, Any]):
        self.base, self.path = base, Path(path)
        self.layout = _layout(self.path, key)
        self._images: np.ndarray | None = None
        self._ids: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Sent to a worker without the mapped arrays (each process maps the file again)."""
        return {**self.__dict__, "_images": None, "_ids": None}

    def _arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._images is None:
            L = self.layout
            self._images = np.memmap(self.path, L["dtype"], "r", offset=L["start"], shape=L["shape"])
            if L["captions"] is not None:
                self._ids = np.memmap(self.path, "<i4", "r", offset=L["captions_at"], shape=L["shape"][:1])
        return self._images, self._ids

    def __len__(self) -> int:
        return self.layout["shape"][0]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def _captions_of(self, indices: np.ndarray) -> list[str]:
        _, ids = self._arrays()
        if ids is None:
            return [self.base.caption(int(i)) for i in indices]
        names = self.layout["captions"]
        return [names[i] for i in ids[indices].tolist()]

    def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """The examples at ``indices`` ([B] ints) as one array [B, *shape] (a copy) and their captions."""
        images, _ = self._arrays()
        indices = np.asarray(indices, dtype=np.int64)
        return np.asarray(np.take(images, indices, axis=0)), self._captions_of(indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} cached examples")
        images, _ = self._arrays()
        return torch.from_numpy(np.array(images[index])), self._captions_of(np.array([index]))[0]

    @property
    def captions(self) -> list[str]:
        """Distinct captions, sorted: from the file when it keeps them, else the dataset's."""
        if self.layout["captions"] is not None:
            return self.layout["captions"]
        return self.base.captions
