"""The training input pipeline: worker processes give the same batches, and the data cache is the
dataset bit for bit, reused, written atomically, and rebuilt when damaged or foreign."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from training_helpers import TINY_UNET, assert_identical, final_tensors, tiny_config

from noisecraft.cli import main
from noisecraft.data.cache import cache_file, cache_key, cached
from noisecraft.data.shapes import ShapesDataset
from noisecraft.training import train
from noisecraft.training.config import resume_conflicts, to_dict
from noisecraft.training.data import IndexedBatches


class EpochCaptions(ShapesDataset):
    """Shapes whose captions change with the epoch (as emoji's and mnist's do), counting renders."""

    def __init__(self, length: int = 40):
        super().__init__(size=16, length=length)
        self.epoch, self.renders = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def caption(self, index: int) -> str:
        return f"{self.scene_and_caption(index)[1]} (epoch {self.epoch})"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        self.renders += 1
        return super().__getitem__(index)[0], self.caption(index)


class Pids(EpochCaptions):
    """Captions name the process that made the example."""

    def caption(self, index: int) -> str:
        return str(os.getpid())


def _batches(dataset, workers: int, ks: list[int]) -> list[tuple[torch.Tensor, list[str]]]:
    source = IndexedBatches(dataset, 8, seed=3, rank=0, world_size=1, workers=workers)
    try:
        return [source.take(k) for k in ks]
    finally:
        source.close()


def test_batches_are_the_same_in_process_and_from_2_workers(tmp_path):
    """Five batches an epoch: k runs over three epochs, then jumps back (as a resume does)."""
    ks = [*range(12), 3, 4]
    cache = cached(EpochCaptions(), "shapes", tmp_path, log=lambda line: None)
    here = _batches(EpochCaptions(), 0, ks)
    for dataset in (EpochCaptions(), cache):
        for (x, captions), (y, expected) in zip(_batches(dataset, 2, ks), here, strict=True):
            assert torch.equal(x, y) and captions == expected
    assert here[5][1][0].endswith("(epoch 1)") and here[10][1][0].endswith("(epoch 2)")
    assert {c for _, cs in _batches(Pids(), 2, [0, 1]) for c in cs} - {str(os.getpid())}, "made here"


def test_the_cache_is_the_dataset_bit_for_bit_and_is_reused(tmp_path):
    lines, base = [], ShapesDataset(size=16, length=40, seed=1)
    counted = EpochCaptions()
    first = cached(counted, "shapes", tmp_path, log=lines.append)
    path = first.path
    assert counted.renders == 40 and len(lines) == 1 and "rendering the 40 examples" in lines[0]
    stamp = (path.stat().st_ino, path.stat().st_mtime_ns)
    again = cached(counted, "shapes", tmp_path, log=lines.append)
    assert counted.renders == 40 and len(lines) == 1  # opened, not rendered again
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp
    counted.set_epoch(2)
    assert again[7][1] == counted.caption(7) and again[7][1].endswith("(epoch 2)")  # drawn, not stored

    fixed = cached(base, "shapes", tmp_path, log=lines.append)  # other options: another file
    assert fixed.path != path and len(list(tmp_path.iterdir())) == 2
    assert fixed.captions == base.captions  # kept in the file: shapes' captions are fixed
    x, captions = fixed.get_batch(np.array([5, 0, 39, 5]))
    assert captions == [base[i][1] for i in (5, 0, 39, 5)]
    assert np.array_equal(x, torch.stack([base[i][0] for i in (5, 0, 39, 5)]).numpy())
    peer = load_file(fixed.path)  # a plain safetensors file
    assert np.array_equal(peer["images"], torch.stack([base[i][0] for i in range(40)]).numpy())
    assert peer["captions"].dtype == np.int32 and sorted(peer) == ["captions", "images"]


def _foreign(path, tmp_path) -> None:
    other = ShapesDataset(size=16, length=40, seed=9)
    os.replace(cached(other, "shapes", tmp_path / "other", log=lambda line: None).path, path)


@pytest.mark.parametrize(
    "damage, why",
    [
        ("truncated", "header or size does not match"),
        ("flipped", "does not match its checksum"),
        ("garbage", "header length is impossible"),
        ("foreign", "written for other data"),
    ],
)
def test_a_damaged_or_foreign_cache_is_rebuilt_with_one_line(tmp_path, damage, why):
    base = ShapesDataset(size=16, length=40)
    path = cached(base, "shapes", tmp_path, log=lambda line: None).path
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        path.write_bytes(data[:-100])
    elif damage == "flipped":
        data[-500] ^= 1
        path.write_bytes(data)
    elif damage == "garbage":
        path.write_bytes(struct.pack("<Q", 2**40) + b"not a cache")
    else:
        _foreign(path, tmp_path)
    lines = []
    rebuilt = cached(base, "shapes", tmp_path, log=lines.append)
    assert len(lines) == 1 and f"data cache {path} is unusable (" in lines[0] and why in lines[0], lines
    assert torch.equal(rebuilt[39][0], base[39][0]) and rebuilt[39][1] == base[39][1]
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == [path.name]


class Failing(ShapesDataset):
    def __getitem__(self, index: int):
        if index == 300:
            raise RuntimeError("the renderer died")
        return super().__getitem__(index)


def test_an_interrupted_build_leaves_no_cache_and_its_leftovers_are_cleared(tmp_path):
    with pytest.raises(RuntimeError, match="renderer died"):
        cached(Failing(size=16, length=400), "shapes", tmp_path, log=lambda line: None)
    assert list(tmp_path.iterdir()) == []  # neither a half file nor a temporary
    base = ShapesDataset(size=16, length=40)
    path = cache_file(tmp_path, cache_key("shapes", base))
    dead = 2**22 + 12345  # above Linux's pid_max default: no such process
    stale = path.with_name(f".{path.name}.tmp-{dead}.raw")
    stale.write_bytes(b"left by a kill -9")
    cached(base, "shapes", tmp_path, log=lambda line: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


SHAPES16 = (
    *TINY_UNET,
    "model.net.image_size=16",
    "model.net.attention_resolutions=[8]",
    "model.net.in_channels=3",
    "data.name=shapes",
    "data.options={size=16, length=32}",
    "optim.batch_size=8",
)


def test_training_from_the_cache_in_workers_equals_training_without(tmp_path, capsys):
    train(tiny_config(*SHAPES16, "steps=3"), tmp_path / "plain")
    cache = ("data.cache=run", "data.workers=2", "data.prefetch=1")
    train(tiny_config(*SHAPES16, *cache, "steps=3"), tmp_path / "cached")
    (written,) = (tmp_path / "cached" / "data-cache").iterdir()
    assert written.name.startswith("shapes-") and "rendering the 32 examples" in capsys.readouterr().err
    assert_identical(final_tensors(tmp_path / "cached"), final_tensors(tmp_path / "plain"))
    saved = to_dict(tiny_config(*SHAPES16, "data.workers=0"))
    assert resume_conflicts(saved, to_dict(tiny_config(*SHAPES16, *cache))) == []  # resumable


@pytest.mark.parametrize(
    "sets, message",
    [
        (
            ["data.cache=run"],
            "data.cache: the 'toy2d' dataset is not cached; it applies to shapes, emoji and mnist",
        ),
        (["data.workers=-1"], "data.workers must be >= 0, got -1"),
        (["data.prefetch=0"], "data.prefetch must be positive, got 0"),
    ],
)
def test_bad_data_settings_are_one_line(tmp_path, capsys, sets, message):
    code = main(["train", "toy2d", "--out", str(tmp_path / "run"), "--set", *sets])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"noisecraft train: error: {message}"]
