"""The trainer's data: streamed tar shards with exact resume, and per-epoch dataset variation."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys

import pytest
import torch
import webdataset as wds
from PIL import Image
from training_helpers import (
    TEXT,
    TINY_UNET,
    assert_identical,
    cli,
    final_tensors,
    tiny_config,
    tiny_overrides,
)

from noisecraft.cli import main
from noisecraft.data import make_dataset
from noisecraft.training import train
from noisecraft.training.checkpoint import latest_checkpoint
from noisecraft.training.data import StreamBatches

N_SHARDS, PER_SHARD = 3, 5  # 15 examples: an odd count, so batches of 2 straddle epoch ends


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """Three tar shards of five 8 × 8 PNGs, each with a caption naming its number."""
    root = tmp_path_factory.mktemp("shards")
    g = torch.Generator().manual_seed(0)
    for s in range(N_SHARDS):
        with wds.TarWriter(str(root / f"part-{s}.tar")) as sink:
            for j in range(PER_SHARD):
                k = s * PER_SHARD + j
                pixels = torch.randint(0, 256, (8, 8, 3), generator=g, dtype=torch.uint8).numpy()
                png = io.BytesIO()
                Image.fromarray(pixels).save(png, format="PNG")
                sink.write({"__key__": f"{k:04d}", "png": png.getvalue(), "txt": f"sample {k}"})
    return root


def _shards_overrides(root) -> list[str]:
    """The tiny toy2d recipe turned into a text-to-image run on shards: flips and shuffles in play."""
    data = ["data.name=shards", "data.options={}", f'data.options.root="{root}"', "data.options.size=8"]
    data += ["data.options.flip=true", "data.options.shuffle_buffer=3", "data.options.seed=5"]
    sampling = ['sampling.prompts=["sample 1"]', "sampling.seeds=[0]", "sampling.steps=2", "sampling.every=4"]
    return [*TINY_UNET, "model.net.in_channels=3", *TEXT, *data, *sampling, "optim.batch_size=4"]


def test_shards_resume_mid_epoch_is_bit_identical(tmp_path, shard_dir):
    """8 steps × 2 micro-batches × 2 = 32 examples: two epochs of 15 and 2 into the third. The split
    run stops after 16 (epoch 1, 1 consumed); its resume must re-shuffle epoch 1 and skip exactly 1."""
    sets = [*_shards_overrides(shard_dir), "steps=8"]
    straight = train(tiny_config(*sets), tmp_path / "straight")
    first = train(tiny_config(*sets), tmp_path / "resumed", stop_after=4)
    _, _, meta = latest_checkpoint(tmp_path / "resumed" / "checkpoints")
    assert meta["data"] == [{"epoch": 1, "consumed": 1}] and first.state.batches == 8
    second = train(tiny_config(*sets), tmp_path / "resumed", resume=True)
    assert second.resumed_from.name == "step-00000004" and second.state == straight.state
    assert (second.batches.epoch, second.batches.consumed) == (2, 2)
    assert_identical(final_tensors(tmp_path / "resumed"), final_tensors(tmp_path / "straight"))
    assert (tmp_path / "resumed" / "samples" / "step-00000008.png").is_file()  # previews from a stream


def test_stream_runs_on_across_epochs_each_reshuffled(shard_dir):
    dataset = make_dataset("shards", root=shard_dir, size=8, shuffle_buffer=3, seed=5)
    stream = StreamBatches(dataset, batch_size=5, rank=0, world_size=1)
    epochs = [[c for _ in range(3) for c in stream.take(0)[1]] for _ in range(2)]  # 15 = one epoch
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(f"sample {k}" for k in range(15))
    assert epochs[0] != epochs[1] and (stream.epoch, stream.consumed) == (1, 15)


def test_stream_is_split_across_ranks_and_restores_per_rank(shard_dir):
    """Two ranks (no process group needed): disjoint shards per epoch, and a rank's restored stream
    continues exactly where its own position says, whatever the other rank's position."""

    def rank_stream(rank: int) -> StreamBatches:
        dataset = make_dataset("shards", root=shard_dir, size=8, flip=True, shuffle_buffer=3, seed=5)
        return StreamBatches(dataset, batch_size=4, rank=rank, world_size=2)  # 2 examples a rank

    streams = [rank_stream(0), rank_stream(1)]
    seen = [[c for _ in range(3) for c in stream.take(0)[1]] for stream in streams]
    assert set(seen[0]).isdisjoint(seen[1][:5])  # epoch 0: rank 0 reads two shards, rank 1 the third
    assert (streams[0].epoch, streams[0].consumed) == (0, 6)  # read its 10 examples' first 6
    assert (streams[1].epoch, streams[1].consumed) == (1, 1)  # 5 in epoch 0, then one more
    restored = rank_stream(1)
    restored.restore([{"epoch": 0, "consumed": 6}, streams[1].positions(torch.device("cpu"))[1]])
    for k in range(3):
        (x, captions), (x_ref, captions_ref) = restored.take(k), streams[1].take(k)
        assert torch.equal(x, x_ref) and captions == captions_ref
    with pytest.raises(ValueError, match="written by 1 processes .* this run has 2; a streamed"):
        rank_stream(0).restore([{"epoch": 0, "consumed": 0}])
    with pytest.raises(ValueError, match="rank 1 of world_size 2 given, but this is process 0 of 2"):
        StreamBatches(make_dataset("shards", root=shard_dir, rank=1, world_size=2), 4, rank=0, world_size=2)


def test_two_processes_resume_a_stream_exactly(tmp_path, shard_dir):
    """torchrun, 2 gloo processes: rank 0 streams two shards an epoch and rank 1 one, so their
    positions differ; resuming from the step-4 checkpoint (copied alone) ends bit-identical."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    extra = [*_shards_overrides(shard_dir), "sampling.every=0", "checkpoint.every=4", "optim.batch_size=8"]

    def torchrun(out, *flags: str) -> None:  # [1:] drops the interpreter: torchrun runs -m itself
        result = subprocess.run(
            [*launcher, *cli(out, *extra, steps=8)[1:], *flags], capture_output=True, text=True, timeout=240
        )
        assert result.returncode == 0, result.stderr[-3000:]

    torchrun(tmp_path / "straight")
    middle = tmp_path / "straight" / "checkpoints" / "step-00000004"
    shutil.copytree(middle, tmp_path / "resumed" / "checkpoints" / middle.name)
    torchrun(tmp_path / "resumed", "--resume")
    _, _, meta = latest_checkpoint(tmp_path / "resumed" / "checkpoints")
    # 8 steps × 2 micro-batches × 2 examples a rank = 32 each: rank 0's epochs hold 10, rank 1's 5
    assert meta["world_size"] == 2 and meta["data"] == [
        {"epoch": 3, "consumed": 2},
        {"epoch": 6, "consumed": 2},
    ]
    assert_identical(final_tensors(tmp_path / "resumed"), final_tensors(tmp_path / "straight"))


def test_no_shards_is_one_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["train", "toy2d", "--out", str(tmp_path / "run"), "--set", *tiny_overrides()]
    code = main([*args, *_shards_overrides(empty)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        f"noisecraft train: error: data.options (shards): no .tar shards found at {empty}"
    ]
    pattern = f"{empty}/part-{{0..2}}.tar"
    with pytest.raises(
        ValueError, match=r"data.options \(shards\): 3 shard\(s\) do not exist, e.g. .*part-0"
    ):
        train(tiny_config(*_shards_overrides(pattern)), tmp_path / "run")
    assert not (tmp_path / "run").exists()


class EpochPoints:
    """Eight 2-D points that move with the epoch (x + epoch), recording the epoch of every read."""

    def __init__(self):
        self.points = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
        self.epoch, self.reads = 0, []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        self.reads.append(self.epoch)
        return self.points[index] + self.epoch, ""


def test_each_epoch_sees_its_own_variation_and_resume_restores_it(tmp_path):
    """Batches of 4 from 8 points: 2 batches an epoch, so 6 steps read epochs 0, 0, 1, 1, 2, 2."""
    sets = ["optim.batch_size=4", "steps=6"]
    straight_data, resumed_data = EpochPoints(), EpochPoints()
    train(tiny_config(*sets), tmp_path / "straight", dataset=straight_data)
    assert straight_data.reads == [e for e in (0, 1, 2) for _ in range(8)]
    train(tiny_config(*sets), tmp_path / "resumed", stop_after=3, dataset=EpochPoints())
    train(tiny_config(*sets), tmp_path / "resumed", resume=True, dataset=resumed_data)
    assert resumed_data.reads == [1] * 4 + [2] * 8  # a fresh dataset is told the resumed epoch
    assert_identical(final_tensors(tmp_path / "resumed"), final_tensors(tmp_path / "straight"))
