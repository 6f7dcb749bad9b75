"""formats.tensor_file reads what safetensors writes, tensor for tensor, and refuses a hostile or
damaged header with one line before reading any data."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from noisecraft.formats.keys import CheckpointError
from noisecraft.formats.tensor_file import TensorFile


def test_reads_every_dtype_and_shape_as_safetensors_wrote_it(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g).half(),
        "c": torch.randn(2, 2, 2, generator=g).bfloat16(), "d": torch.arange(6).reshape(2, 3),
        "e": torch.tensor([True, False]), "empty": torch.zeros(0, 3),
    }  # fmt: skip
    save_file(tensors, str(tmp_path / "t.safetensors"), metadata={"format": "pt"})
    with TensorFile(tmp_path / "t.safetensors") as f:
        assert sorted(f.keys()) == sorted(tensors) and f.shape("c") == (2, 2, 2)
        for name, tensor in tensors.items():
            got = f.get_tensor(name)
            assert got.dtype == tensor.dtype and torch.equal(got, tensor), name


def header_file(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize(
    "header, data, message",
    [
        (None, b"", "header length is impossible"),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "outside the file"),
        ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16, "wrong size"),
        ({"w": {"dtype": "F99", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16, "malformed"),
        ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, b"\0" * 16, "outside the file"),
        ({"w": {"dtype": "F32", "shape": [4]}}, b"\0" * 16, "malformed"),
    ],
)
def test_bad_headers_are_one_clear_error(tmp_path, header, data, message):
    path = tmp_path / "bad.safetensors"
    if header is None:
        path.write_bytes(struct.pack("<Q", 2**40) + b"{}")  # claims a terabyte of header
    else:
        header_file(path, header, data)
    with pytest.raises(CheckpointError, match=message):
        TensorFile(path)
