"""Device, precision and threads: resolved and checked once (devices.py), refused in one line (CLI)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline

from noisecraft.cli import main
from noisecraft.devices import (
    DeviceError,
    Placement,
    resolve_device,
    resolve_dtype,
    resolve_placement,
    set_threads,
)
from noisecraft.model import SamplingOptions, sample
from noisecraft.nets.layers import NoiseEmbedding
from noisecraft.schedules import sigma_at_timestep, timestep_at_sigma, vp_sigmas

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_picks_cuda_then_mps_then_cpu(no_gpu, monkeypatch):
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("auto", index=1) == torch.device("cuda", 1)  # torchrun's LOCAL_RANK
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="has 2 GPU"):
        resolve_device("cuda:2")


def test_missing_or_unknown_devices_are_refused(no_gpu):
    with pytest.raises(DeviceError, match="'cuda' was asked for"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="'mps' was asked for"):
        resolve_device("mps")
    for bad in ("tpu", "cpu:1", "cuda:x", ""):
        with pytest.raises(DeviceError, match="valid: auto, cpu, cuda, mps"):
            resolve_device(bad)


def test_half_precision_only_on_an_accelerator():
    cpu, mps, cuda = torch.device("cpu"), torch.device("mps"), torch.device("cuda", 0)
    for name in ("fp16", "bf16"):
        with pytest.raises(DeviceError, match="GPU .* only: CPUs have no half-precision units"):
            resolve_dtype(name, cpu)
        assert resolve_dtype(name, cuda) in (torch.float16, torch.bfloat16)
    assert resolve_dtype("fp16", mps) == torch.float16
    assert resolve_dtype("fp32", cpu) == torch.float32
    with pytest.raises(DeviceError, match="no float64"):
        resolve_dtype(torch.float64, mps)
    with pytest.raises(DeviceError, match="valid: fp32, fp16, bf16"):
        resolve_dtype("fp8", cuda)


def test_threads_are_checked_and_reach_worker_threads():
    before = torch.get_num_threads()
    try:
        for bad in (0, -1, 1.5, True):
            with pytest.raises(DeviceError, match="positive integer"):
                set_threads(bad)
        set_threads(None)
        assert torch.get_num_threads() == before
        set_threads(2)
        seen = []
        worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))  # the server's
        worker.start()
        worker.join()
        assert torch.get_num_threads() == 2 and seen == [2]
    finally:
        torch.set_num_threads(before)


def test_gpu_speed_options_stay_off_on_the_cpu():
    assert Placement().compute_dtype is None
    for options in ({"channels_last": True}, {"compile": True}, {"attention": "flash"},
                    {"autocast": torch.bfloat16}):  # fmt: skip
        with pytest.raises(DeviceError, match="on the CPU they stay off"):
            Placement(**options)
    with pytest.raises(DeviceError, match="CUDA only"):
        Placement(torch.device("mps"), compile=True)
    with pytest.raises(DeviceError, match="unknown kernel"):
        Placement(torch.device("cuda", 0), attention="fastest")
    assert Placement(torch.device("cuda", 0), torch.bfloat16).compute_dtype == torch.bfloat16
    assert Placement(torch.device("cuda", 0), autocast=torch.bfloat16).compute_dtype == torch.bfloat16


@no_cuda
@pytest.mark.parametrize(
    "command", [["generate", "a star"], ["serve"], ["eval", "shapes", "--dataset", "shapes"]]
)
@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--device", "cuda"], "'cuda' was asked for"),
        (["--device", "cpu", "--dtype", "fp16"], "CPUs have no half-precision units"),
        (["--threads", "0"], "threads: must be a positive integer"),
    ],
)
def test_cli_refuses_in_one_line(command, flags, says, capsys):
    before = torch.get_num_threads()
    assert main([*command, *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and err.startswith(f"noisecraft {command[0]}: error: ")
    assert torch.get_num_threads() == before


@no_cuda
def test_training_refuses_cuda_without_it_in_one_line(tmp_path, capsys):
    code = main(["train", "toy2d", "--steps", "1", "--out", str(tmp_path / "run"), "--set", "device=cuda"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "'cuda' was asked for" in err


def test_pipeline_to_cpu_keeps_every_pixel():
    pipe = make_tiny_pipeline()
    before = pipe.sample(["a red circle", "a blue square"], seed=4)
    assert pipe.to("cpu") is pipe and pipe.to("auto" if not torch.cuda.is_available() else "cpu") is pipe
    assert torch.equal(pipe.sample(["a red circle", "a blue square"], seed=4), before)


def test_pipeline_in_float64_starts_from_the_same_noise():
    """Another precision changes the pixels a little, never the starting noise (drawn in float32 on the
    CPU per seed, then moved); float64 stands in for fp16/bf16, which a CPU refuses."""
    pipe = make_tiny_pipeline()
    starts = []

    def first_x(step):
        if step.index == 0:
            starts.append(step.x)

    fp32 = pipe.sample(["a red circle"], seed=9, callback=first_x)
    hash32 = pipe.weights_hash
    pipe.to("cpu", torch.float64)
    assert next(pipe.net.parameters()).dtype == torch.float64 and pipe.weights_hash == hash32
    fp64 = pipe.sample(["a red circle"], seed=9, callback=first_x)
    assert fp64.dtype == torch.float64 and starts[1].dtype == torch.float64
    assert (fp64 - fp32.double()).abs().max() < 1e-4 and not torch.equal(fp64, fp32.double())
    generated = [np.asarray(pipe.generate("a red circle", seed=9)[0])]
    assert generated[0].shape == (8, 8, 3)


def test_sample_draws_the_starting_noise_in_float32_then_casts():
    seen = []

    def denoiser(x, sigma, cond=None):
        seen.append(x.clone())
        return torch.zeros_like(x)

    options = SamplingOptions(steps=2, sampler="euler", guidance=1.0, schedule="karras", sigma_min=0.1,
                              sigma_max=10.0, rho=7.0)  # fmt: skip
    sample(denoiser, (1, 4, 4), options, [3, 4], dtype=torch.float32)
    sample(denoiser, (1, 4, 4), options, [3, 4], dtype=torch.float64)
    assert seen[2].dtype == torch.float64 and torch.allclose(seen[2], seen[0].double(), rtol=1e-6, atol=0)
    assert not torch.allclose(seen[0], seen[1], atol=0.5)  # the two seeds: two draws


def test_half_placing_casts_parameters_but_keeps_fixed_tables():
    """Half weights run under autocast; the noise-embedding frequencies (fixed, not learnt) keep float32,
    so timesteps up to 999 keep their phase (fp16 would round 999·f by up to 0.25 rad)."""
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), NoiseEmbedding(8))
    half = Placement(torch.device("cuda", 0), torch.float16)
    object.__setattr__(half, "device", torch.device("cpu"))  # the cast alone, on a machine without a GPU
    half.place(module)
    assert module[0].weight.dtype == torch.float16 and module[1].freqs.dtype == torch.float32
    Placement(torch.device("cpu"), torch.float64).place(module)  # full precision: buffers too
    assert module[0].weight.dtype == torch.float64 and module[1].freqs.dtype == torch.float64


def test_timesteps_are_found_where_the_table_lives():
    table = vp_sigmas(torch.linspace(0.9999, 0.01, 1000, dtype=torch.float64))  # [1000] float64
    t = torch.tensor([0.0, 17.25, 998.5], dtype=torch.float64)
    sigma = sigma_at_timestep(t, table).float()  # float32 σ, as a sampler holds it
    found = timestep_at_sigma(sigma, table)
    assert found.dtype == torch.float32 and found.device == sigma.device
    assert torch.allclose(found.double(), t, atol=1e-3)


def test_resolve_placement_sets_threads_before_checking_the_rest():
    before = torch.get_num_threads()
    try:
        placement = resolve_placement("cpu", "fp32", threads=1)
        assert placement == Placement() and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_placement_takes_names_and_stores_torch_values():
    placement = Placement("cuda:0", "bf16", autocast="fp16")  # checked, not resolved: no GPU needed
    assert placement.device == torch.device("cuda", 0) and placement.dtype == torch.bfloat16
    assert placement.autocast == torch.float16 and str(placement) == "cuda:0 bf16"
    with pytest.raises(DeviceError, match="autocast: must be fp16 or bf16"):
        Placement("cuda:0", autocast="fp32")
