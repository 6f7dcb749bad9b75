"""Metrics: one JSON object per line in ``metrics.jsonl`` and TensorBoard scalars, without TensorBoard.

TensorBoard reads ``events.out.tfevents.*`` files: TFRecord frames (length, masked CRC-32C, data,
masked CRC-32C) around ``Event`` protocol buffers. A scalar event needs five protobuf fields, so
they are encoded by hand here instead of depending on tensorboard and protobuf.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):  # reflected Castagnoli polynomial 0x1EDC6F41
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord uses; crc32c(b"123456789") = 0xE3069283."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 and add a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def scalar_event(tag: str, value: float, step: int, wall_time: float) -> bytes:
    """Event{wall_time=1, step=2, summary=5{value=1{tag=1, simple_value=2}}} as protobuf bytes."""
    summary_value = _length_delimited(1, tag.encode()) + b"\x15" + struct.pack("<f", value)
    summary = _length_delimited(1, summary_value)
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + _length_delimited(5, summary)


def version_event(wall_time: float) -> bytes:
    """Event{wall_time=1, file_version=3}: the first record of every events file."""
    return b"\x09" + struct.pack("<d", wall_time) + _length_delimited(3, b"brain.Event:2")


def tfrecord(data: bytes) -> bytes:
    """One TFRecord frame around ``data``."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


class TensorBoardWriter:
    """Appends scalar events to a new ``events.out.tfevents.<time>.<host>`` file in ``folder``."""

    def __init__(self, folder: str | os.PathLike):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = folder / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}"
        self.file = open(self.path, "ab")
        self.file.write(tfrecord(version_event(now)))

    def add_scalars(self, values: dict[str, float], step: int) -> None:
        now = time.time()
        for tag, value in values.items():
            self.file.write(tfrecord(scalar_event(tag, float(value), step, now)))
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class MetricsLogger:
    """``log(step, values)`` → a line in metrics.jsonl and TensorBoard scalars (rank 0 only)."""

    def __init__(self, folder: str | os.PathLike, tensorboard: bool, resume_step: int | None = None):
        self.path = Path(folder) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._truncate_after(resume_step)
        self.file = open(self.path, "a")
        self.tensorboard = TensorBoardWriter(Path(folder) / "tensorboard") if tensorboard else None

    def _truncate_after(self, step: int) -> None:
        """Drop lines logged after the checkpoint being resumed: those steps will be run again."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def log(self, step: int, values: dict[str, Any]) -> None:
        record = {"step": step, **{k: _json_number(v) for k, v in values.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            numbers = {
                k: v for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)
            }
            self.tensorboard.add_scalars(numbers, step)

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf  # a torn last line from a killed run: drop it


def _json_number(value: Any) -> Any:
    """NaN and infinity are not JSON: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
