"""Checkpoints: exact round trips without pickle, last-K, no NaN, and atomic under ``kill -9``."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from safetensors.torch import save_file
from training_helpers import RECIPE, assert_identical, cli, final_tensors, popen, tiny_config, tiny_overrides

from noisecraft.cli import main
from noisecraft.training import train
from noisecraft.training.checkpoint import (
    META_FILE,
    PAUSE_ENV,
    PAUSE_MESSAGE,
    TENSORS_FILE,
    flatten_optimizer,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    unflatten_optimizer,
)
from noisecraft.training.trainer import Trainer


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model/w": torch.randn(3, 4, generator=g),
        "model/b": torch.randn(4, generator=g, dtype=torch.float64),
        "optim/0/step": torch.tensor(7.0),  # 0-dim, as AdamW keeps its step count
        "rng/train": torch.Generator().manual_seed(seed).get_state(),  # uint8
    }


def test_round_trip_is_exact(tmp_path):
    tensors = _tensors()
    path = save_checkpoint(tmp_path, 12, tensors, {"state": {"step": 12}}, keep=3)
    assert path.name == "step-00000012" and {p.name for p in path.iterdir()} == {TENSORS_FILE, META_FILE}
    loaded, meta = load_checkpoint(path)
    assert meta["step"] == 12 and meta["state"] == {"step": 12} and meta["format"] == 1
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000012"]  # no temporary left behind
    # safetensors + JSON only: nothing pickled
    assert (path / TENSORS_FILE).read_bytes()[:2] != b"\x80\x04"
    json.loads((path / META_FILE).read_text())


def test_keeps_the_newest_k(tmp_path):
    for step in (5, 10, 15, 20, 25):
        save_checkpoint(tmp_path, step, _tensors(step), {}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000020", "step-00000025"]
    path, tensors, meta = latest_checkpoint(tmp_path)
    assert meta["step"] == 25 and torch.equal(tensors["model/w"], _tensors(25)["model/w"])


def test_refuses_non_finite_values(tmp_path):
    save_checkpoint(tmp_path, 1, _tensors(), {}, keep=3)
    for bad in (float("nan"), float("inf")):
        tensors = _tensors()
        tensors["model/w"][1, 2] = bad
        with pytest.raises(ValueError, match="model/w contains NaN or infinity"):
            save_checkpoint(tmp_path, 2, tensors, {}, keep=3)
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001"]


def test_stale_temporaries_and_damaged_checkpoints_are_skipped(tmp_path):
    save_checkpoint(tmp_path, 1, _tensors(1), {}, keep=3)
    damaged = save_checkpoint(tmp_path, 2, _tensors(2), {}, keep=3)
    data = (damaged / TENSORS_FILE).read_bytes()
    (damaged / TENSORS_FILE).write_bytes(data[: len(data) // 2])  # e.g. a disk that lost the tail
    stale = tmp_path / ".tmp-step-00000003-999"
    stale.mkdir()
    (stale / TENSORS_FILE).write_bytes(b"partial")
    with pytest.warns(UserWarning, match="step-00000002: unreadable checkpoint"):
        path, tensors, _ = latest_checkpoint(tmp_path)
    assert path.name == "step-00000001" and torch.equal(tensors["model/w"], _tensors(1)["model/w"])
    save_checkpoint(tmp_path, 3, _tensors(3), {}, keep=3)
    assert not stale.exists()  # the next save clears what a killed save left


def test_optimizer_state_round_trip_continues_identically():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    x = torch.randn(16, 3)

    def step(m: torch.nn.Module, o: torch.optim.Optimizer) -> None:
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()

    for _ in range(3):
        step(model, opt)
    tensors, meta = flatten_optimizer(opt)
    tensors = {k: v.clone() for k, v in tensors.items()}  # they alias the live state until written
    meta = json.loads(json.dumps(meta))  # as it travels through state.json
    twin = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    twin.load_state_dict(model.state_dict())
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=0.5)
    twin_opt.load_state_dict(unflatten_optimizer(tensors, meta))
    assert twin_opt.param_groups[0]["betas"] == (0.8, 0.95) and twin_opt.param_groups[0]["lr"] == 1e-2
    for _ in range(2):
        step(model, opt)
        step(twin, twin_opt)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("workers", [0, 2])
def test_kill_9_while_writing_a_checkpoint_then_resume(tmp_path, workers):
    """A run killed half-way through writing its step-8 checkpoint resumes from step 4 and ends
    bit-identical to a run that was never interrupted (made in this process), with its batches made
    in the training process or by worker processes."""
    extra = ("checkpoint.every=4", "checkpoint.keep=2")
    straight = tmp_path / "straight"
    train(tiny_config(*extra, "steps=12"), straight)

    killed, made_by = tmp_path / "killed", f"data.workers={workers}"
    process = popen(cli(killed, *extra, made_by, steps=12), **{PAUSE_ENV: "8"})
    try:
        for line in process.stderr:  # wait until the write of step 8 is half done
            if PAUSE_MESSAGE in line:
                break
        else:
            pytest.fail(f"the run ended (code {process.wait()}) without reaching the paused write")
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    folder = killed / "checkpoints"
    temporaries = list(folder.glob(".tmp-step-00000008-*"))
    assert len(temporaries) == 1 and 0 < (temporaries[0] / TENSORS_FILE).stat().st_size
    assert not (temporaries[0] / META_FILE).exists()
    assert [p.name for p in list_checkpoints(folder)] == ["step-00000004"]

    trainer = train(tiny_config(*extra, made_by, "steps=12"), killed, resume=True)
    assert trainer.resumed_from.name == "step-00000004" and trainer.state.step == 12
    assert not list(folder.glob(".tmp-*"))
    assert_identical(final_tensors(killed), final_tensors(straight))


def test_a_checkpoint_whose_metadata_is_not_an_object_is_unreadable(tmp_path):
    path = save_checkpoint(tmp_path, 1, _tensors(), {}, keep=3)
    (path / META_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match="unreadable checkpoint .*state.json is not a JSON object"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no_config", "is damaged or not from this code (KeyError: 'config')"),
        ("no_optimizer_scalars", "is damaged or not from this code (KeyError: 'scalars')"),
        ("step_is_text", "state.step: expected int, got 'x'"),
        ("no_rng", "is damaged or not from this code (KeyError: 'rng/train')"),
        (
            "weights_of_another_shape",
            "(RuntimeError: Error(s) in loading state_dict for DiffusionObjective: size",
        ),
    ],
)
def test_resume_from_a_damaged_checkpoint_is_one_line_and_keeps_it(tmp_path, capsys, damage, message):
    Trainer(tiny_config(), tmp_path).save()  # a checkpoint of step 0; nothing is trained
    (folder,) = list_checkpoints(tmp_path / "checkpoints")
    tensors, meta = load_checkpoint(folder)
    if damage == "no_config":
        del meta["config"]
    elif damage == "no_optimizer_scalars":
        meta["optimizer"] = {}
    elif damage == "step_is_text":
        meta["state"]["step"] = "x"
    elif damage == "no_rng":
        del tensors["rng/train"]
    else:
        key = next(k for k, v in tensors.items() if k.startswith("model/") and v.ndim == 2)
        tensors[key] = tensors[key][:1].clone()
    save_file(tensors, folder / TENSORS_FILE)
    (folder / META_FILE).write_text(json.dumps(meta))
    code = main(["train", str(RECIPE), "--out", str(tmp_path), "--resume", "--set", *tiny_overrides()])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("noisecraft train: error: --resume: "), err
    assert message in err[0], err
    assert list_checkpoints(tmp_path / "checkpoints") == [folder] and (folder / TENSORS_FILE).is_file()
