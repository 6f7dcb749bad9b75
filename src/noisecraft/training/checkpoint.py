"""Training checkpoints: one folder per step with safetensors tensors + JSON metadata, written atomically.

A checkpoint is ``checkpoints/step-00000100/{state.safetensors, state.json}``. It is written into a
hidden temporary folder that is renamed into place only when both files are complete and synced,
so a process killed at any moment (even ``kill -9`` in the middle of a file) leaves the previous
checkpoints intact and at worst a stale temporary folder, removed by the next save. Nothing is
pickled: the optimizer state is flattened into named tensors plus JSON, RNG states are uint8
tensors.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

TENSORS_FILE, META_FILE = "state.safetensors", "state.json"
PREFIX, TEMP_PREFIX = "step-", ".tmp-"
FORMAT = 1
# Test hook: when set to a step number, the write of that step's checkpoint stops half-way through
# the tensors file, prints PAUSE_MESSAGE to stderr and sleeps, so a test can kill the process there.
PAUSE_ENV, PAUSE_MESSAGE = "NOISECRAFT_PAUSE_CHECKPOINT_AT", "noisecraft: checkpoint write paused"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def _write_synced(path: Path, data: bytes, pause: bool = False) -> None:
    """Write bytes and fsync them; ``pause`` stops half-way for the kill test."""
    with open(path, "wb") as f:
        if pause:
            f.write(data[: len(data) // 2])
            f.flush()
            print(PAUSE_MESSAGE, file=sys.stderr, flush=True)
            time.sleep(600)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_finite(tensors: dict[str, Tensor]) -> None:
    """Refuse to write NaN or infinity: a checkpoint must always be a safe point to resume from."""
    for key, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"refusing to save a checkpoint: {key} contains NaN or infinity")


def save_checkpoint(
    folder: str | os.PathLike, step: int, tensors: dict[str, Tensor], meta: dict, keep: int
) -> Path:
    """Atomically write checkpoint ``step`` under ``folder``, then keep only the newest ``keep``."""
    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _check_finite(tensors)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{TEMP_PREFIX}*"):  # left by a process killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    name = checkpoint_name(step)
    tmp = folder / f"{TEMP_PREFIX}{name}-{os.getpid()}"
    tmp.mkdir()
    try:
        pause = os.environ.get(PAUSE_ENV) == str(step)
        _write_synced(tmp / TENSORS_FILE, safetensors_bytes(tensors), pause)
        record = {"format": FORMAT, "step": step, **meta}
        _write_synced(tmp / META_FILE, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
        _fsync_dir(tmp)
        final = folder / name
        if final.exists():  # the same step saved before a crash; the new one replaces it
            shutil.rmtree(final)
        os.rename(tmp, final)  # the commit point: atomic on POSIX
        _fsync_dir(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(folder, keep)
    return final


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Completed checkpoint folders under ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(found, key=lambda p: p.name)


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and metadata of one checkpoint folder; ValueError if it is unreadable."""
    path = Path(path)
    try:
        meta = json.loads((path / META_FILE).read_text())
        tensors = load_file(path / TENSORS_FILE)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, SafetensorError, RecursionError) as err:
        raise ValueError(f"{path}: unreadable checkpoint ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: unreadable checkpoint ({META_FILE} is not a JSON object)")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {meta.get('format')!r}, this version reads {FORMAT}")
    return tensors, meta


def latest_checkpoint(folder: str | os.PathLike) -> tuple[Path, dict[str, Tensor], dict[str, Any]] | None:
    """The newest checkpoint that loads (skipping damaged ones with a warning), or None."""
    for path in reversed(list_checkpoints(folder)):
        try:
            return (path, *load_checkpoint(path))
        except ValueError as err:
            warnings.warn(f"skipping {err}", stacklevel=2)
    return None


def nothing_to_resume(folder: str | os.PathLike, run: str | os.PathLike) -> str:
    """Why a resume cannot start: no checkpoint, or every one damaged (each named with its fault) and
    how to start over: delete the run folder (or train into another)."""
    damaged = []
    for path in list_checkpoints(folder):
        try:
            load_checkpoint(path)
        except ValueError as err:
            damaged.append(str(err))
    if not damaged:
        return f"--resume: no checkpoint in {folder}"
    return (
        f"--resume: every checkpoint in {folder} is damaged: {'; '.join(damaged)}. "
        f"To start over, delete {run} (or train into another --out)"
    )


# ----------------------------------------------------------------------------------------------
# Optimizer and RNG state without pickle.


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimizer state dict as tensors ``optim/<param>/<key>`` plus JSON (param groups, scalars)."""
    state_dict = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, state in state_dict["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"optim/{index}/{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``flatten_optimizer``: a state dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, index, key = name.split("/", 2)
            state.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    # JSON turned tuples (betas) into lists; give them back their type
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
        for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def rng_tensors(generator: torch.Generator) -> dict[str, Tensor]:
    """The training generator's and torch's global RNG states as uint8 tensors."""
    states = {"rng/train": generator.get_state(), "rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["rng/cuda"] = torch.cuda.get_rng_state()
    return states


def restore_rng(tensors: dict[str, Tensor], generator: torch.Generator) -> None:
    """Put back the RNG states saved by ``rng_tensors``."""
    generator.set_state(tensors["rng/train"])
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])
