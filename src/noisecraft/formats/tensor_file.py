"""Read a ``.safetensors`` file one tensor at a time with plain reads, every header field checked.

safetensors' own ``safe_open`` maps the file into memory: every page a load touches then counts as
the process's resident memory until the kernel drops it, so loading an fp16 Stable Diffusion file
into fp32 modules peaked at the file's size above the weights (measured: 1.91× the fp32 weights).
Here each tensor is read into its own buffer and the file is never mapped. The format is the
documented one: 8 bytes little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}}, then the data. A file from someone else is input: the header is bounded and every
offset and size checked before anything is read.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from .keys import CheckpointError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip
MAX_HEADER_BYTES = 100 * 2**20  # the format's own limit


class TensorFile:
    """``with TensorFile(path) as f: f.keys(), f.shape(name), f.get_tensor(name), f.metadata``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 (closed by __exit__ / close)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path}: no such file") from None
        try:
            self.entries, self.data_start, self.metadata = self._read_header()
        except BaseException:
            self.file.close()
            raise

    def _read_header(self) -> tuple[dict[str, dict[str, Any]], int, dict[str, str]]:
        size = os.fstat(self.file.fileno()).st_size
        raw = self.file.read(8)
        length = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
            raise self._bad("its header length is impossible (a truncated or foreign file?)")
        try:
            header = json.loads(self.file.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise self._bad(f"its header is not JSON ({type(err).__name__}: {err})") from None
        if not isinstance(header, dict):
            raise self._bad("its header is not a JSON object")
        metadata = header.pop("__metadata__", None)  # the format's text fields; anything else is ignored
        metadata = metadata if isinstance(metadata, dict) else {}
        metadata = {k: v for k, v in metadata.items() if isinstance(v, str)}
        data_size = size - 8 - length
        for name, entry in header.items():
            self._check_entry(name, entry, data_size)
        return header, 8 + length, metadata

    def _check_entry(self, name: str, entry: Any, data_size: int) -> None:
        try:
            dtype, shape, (start, end) = DTYPES[entry["dtype"]], entry["shape"], entry["data_offsets"]
            fits = (
                all(isinstance(n, int) and n >= 0 for n in (*shape, start, end)) and start <= end <= data_size
            )
        except (KeyError, TypeError, ValueError):
            raise self._bad(f"tensor {name!r} has a malformed header entry") from None
        itemsize = torch.empty((), dtype=dtype).element_size()
        if not fits or (end - start) != math.prod(shape) * itemsize:
            raise self._bad(f"tensor {name!r} lies outside the file or has the wrong size (truncated?)")

    def _bad(self, why: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: not a readable safetensors file: {why}")

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def get_tensor(self, name: str) -> Tensor:
        """The tensor ``name``, read from the file into memory of its own."""
        entry = self.entries[name]
        start, end = entry["data_offsets"]
        buffer = bytearray(end - start)
        self.file.seek(self.data_start + start)
        if self.file.readinto(buffer) != len(buffer):
            raise self._bad(f"tensor {name!r} ends early")
        dtype = DTYPES[entry["dtype"]]
        if not buffer:
            return torch.empty(entry["shape"], dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype).reshape(entry["shape"])

    def read_all(self, prefix: str = "") -> dict[str, Tensor]:
        """Every tensor whose name starts with ``prefix``."""
        return {name: self.get_tensor(name) for name in self.entries if name.startswith(prefix)}

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
