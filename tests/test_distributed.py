"""DDP: two gloo processes sharing a global batch reach the same weights as one process with it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from training_helpers import cli, final_tensors, tiny_config

from noisecraft.training import Trainer, train
from noisecraft.training.data import shard

# float32, as trained: the two differ only in summation order (two half-batch means averaged by
# the all-reduce vs one mean), measured at 7e-8 after 6 steps; 1e-6 leaves a 15× margin.
DDP = ("precision=fp32", "optim.grad_accum=2", "checkpoint.every=3", "log.every=1")


def test_shard_splits_a_global_batch_evenly():
    batch = torch.arange(12)
    parts = [shard(batch, rank, 3) for rank in range(3)]
    assert torch.equal(torch.cat(parts), batch) and all(len(p) == 4 for p in parts)


def test_two_processes_match_one(tmp_path):
    """torchrun --nproc_per_node 2 on CPU vs one process, global batch 64 (2 micro-batches of 32)."""
    steps = 6
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = cli(tmp_path / "ddp", *DDP, steps=steps)
    try:  # command[1:] drops the interpreter: torchrun runs ``-m noisecraft train ...`` itself
        result = subprocess.run([*launcher, *command[1:]], capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as err:  # say where it stopped (seen once: after the last step)
        metrics = tmp_path / "ddp" / "metrics.jsonl"
        logged = metrics.read_text().count("\n") if metrics.exists() else 0
        output = (err.stderr or b"")[-3000:]
        pytest.fail(f"torchrun still running after 240 s, {logged} steps logged; stderr: {output!r}")
    assert result.returncode == 0, result.stderr[-3000:]
    train(tiny_config(*DDP, f"steps={steps}"), tmp_path / "single")

    ddp, single = final_tensors(tmp_path / "ddp"), final_tensors(tmp_path / "single")
    assert sorted(ddp) == sorted(single)
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-6, atol=1e-6, msg=key)
    initial = Trainer(tiny_config(*DDP), tmp_path / "init").objective.state_dict()
    moved = max((single[f"model/{k}"] - v).abs().max().item() for k, v in initial.items())
    assert moved > 1e-3  # the weights did move: the agreement is not that of two idle runs
    # rank 0 alone logs and saves: one line per step, one events file, world size recorded
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, steps + 1))
    assert len(list((tmp_path / "ddp" / "tensorboard").iterdir())) == 1
    meta = json.loads((tmp_path / "ddp" / "checkpoints" / "step-00000006" / "state.json").read_text())
    assert meta["world_size"] == 2 and meta["state"]["batches"] == 2 * steps
