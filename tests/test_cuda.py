"""On a CUDA GPU: the same nets, samplers and pipelines as on the CPU, within stated tolerances, and
training that checkpoints and resumes exactly. Every test here is marked ``cuda`` and skips without a
GPU (conftest.py); ``benchmarks/device_check.sh`` runs them on a GPU machine with ``-s``, so the
measured differences are printed beside the bounds they are checked against.

Tolerances. fp32 with TF32 off: CPU and GPU kernels sum in other orders (≈ 1e-6 relative), so a U-Net
output agrees to 1e-4 and a 4-step sampler walk to 1e-3. With torch's defaults (cuDNN convolutions
in TF32, 10-bit mantissa) and in fp16/bf16, the 8-bit images of a trained model are compared by
their mean difference in levels of 255: a changed seed, schedule or prompt moves most pixels by tens.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline
from training_helpers import TEXT, assert_identical, final_tensors, tiny_config

from noisecraft.cli import main
from noisecraft.model import SamplingOptions, sample
from noisecraft.pipeline import Pipeline
from noisecraft.training import train

pytestmark = pytest.mark.cuda
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (exact resume)
CUDA = torch.device("cuda", 0)
PROMPTS = ["a handwritten 7", "a handwritten 3"]


@pytest.fixture
def strict_fp32():
    """TF32 off for matmuls and convolutions: fp32 on the GPU as on the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _report(what: str, value: float, bound: float) -> None:
    print(f"\n[cuda parity] {what}: {value:.3g} (bound {bound:g})")


def test_unet_matches_the_cpu(strict_fp32):
    pipe = make_tiny_pipeline()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    c_noise = torch.tensor([-1.0, 0.0, 0.5, 1.5])
    with torch.no_grad():
        cond = pipe.encode(["a red circle"] * 4)
        cpu = pipe.net(x, c_noise, cond)
        pipe.to("cuda")
        gpu = pipe.net(x.to(CUDA), c_noise.to(CUDA), cond.to(CUDA)).cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = pipe.net(x.to(CUDA), c_noise.to(CUDA), cond.to(CUDA)).float().cpu()
    scale = cpu.abs().max().item()
    _report("U-Net fp32 max |Δ| / max |out|", (gpu - cpu).abs().max().item() / scale, 1e-4)
    _report("U-Net bf16 autocast max |Δ| / max |out|", (bf16 - cpu).abs().max().item() / scale, 5e-2)
    assert (gpu - cpu).abs().max() <= 1e-4 * scale
    assert (bf16 - cpu).abs().max() <= 5e-2 * scale and not torch.equal(bf16, gpu)


def test_a_stochastic_sampler_walks_the_same_path(strict_fp32):
    """Euler ancestral draws fresh noise every step: drawn on the CPU per seed, the same on the GPU."""
    pipe = make_tiny_pipeline()
    options = SamplingOptions(steps=4, sampler="euler_ancestral", guidance=2.0).resolve(pipe.config)
    cond, uncond = pipe.encode(["a red circle", "a star"]), pipe.encode([""])
    cpu = sample(pipe.denoiser, (3, 8, 8), options, [5, 6], cond, uncond)
    pipe.to("cuda")
    gpu = sample(pipe.denoiser, (3, 8, 8), options, [5, 6], cond.to(CUDA), uncond.to(CUDA), device=CUDA)
    other = sample(pipe.denoiser, (3, 8, 8), options, [7, 8], cond.to(CUDA), uncond.to(CUDA), device=CUDA)
    _report("euler_ancestral 4 steps max |Δ|", (gpu.cpu() - cpu).abs().max().item(), 1e-3)
    assert gpu.device == CUDA and (gpu.cpu() - cpu).abs().max() <= 1e-3
    assert (other.cpu() - cpu).abs().mean() > 0.1  # other seeds: another walk altogether


@pytest.mark.parametrize(("dtype", "tf32", "mean_bound"), [("fp32", False, 0.1), ("fp32", True, 1.0),
                                                      ("fp16", True, 3.0), ("bf16", True, 6.0)])  # fmt: skip
def test_pipeline_images_match_the_cpu(dtype, tf32, mean_bound):
    """The shipped MNIST model (built-in text encoder): fp32 with TF32 off and with torch's default
    (cuDNN convolutions in TF32), fp16 and bf16."""
    kwargs = {"seed": 11, "num_images": 2, "steps": 12}
    cpu = np.stack([np.asarray(im) for im in Pipeline.load("mnist").generate(PROMPTS, **kwargs)])
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        pipe = Pipeline.load("mnist").to("cuda", dtype)
        gpu = np.stack([np.asarray(im) for im in pipe.generate(PROMPTS, **kwargs)])
        shifted = np.stack([np.asarray(im) for im in pipe.generate(PROMPTS, **{**kwargs, "seed": 12})])
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    diff = np.abs(gpu.astype(int) - cpu.astype(int))
    _report(f"mnist {dtype} tf32={tf32} mean |Δ| levels (max {diff.max()})", diff.mean(), mean_bound)
    assert diff.mean() <= mean_bound
    assert np.abs(shifted.astype(int) - cpu.astype(int)).mean() > max(10, 2 * mean_bound)  # other seeds


def test_generate_cli_on_cuda(tmp_path):
    code = main(["generate", "a handwritten 4", "--model", "mnist", "--device", "cuda", "--dtype", "bf16",
                 "--steps", "4", "--out", str(tmp_path), "--quiet"])  # fmt: skip
    assert code == 0 and len(list(tmp_path.glob("*.png"))) == 1


@contextlib.contextmanager
def deterministic():
    """Deterministic kernels, and SDPA's math kernel (the fused kernels' backward add in any order)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.use_deterministic_algorithms(False)


def test_training_on_cuda_checkpoints_and_resumes_exactly(tmp_path):
    """The text-conditioned toy recipe (encoder, caption dropout, 2 micro-batches) in bf16 autocast."""
    sets = (*TEXT, "device=cuda", "steps=8")
    with deterministic():
        straight = train(tiny_config(*sets), tmp_path / "straight")
        first = train(tiny_config(*sets), tmp_path / "resumed", stop_after=4)
        second = train(tiny_config(*sets), tmp_path / "resumed", resume=True)
    assert straight.device.type == "cuda" and straight.bf16  # precision auto: bf16 autocast on CUDA
    assert first.state.step == 4 and second.resumed_from.name == "step-00000004"
    assert second.state == straight.state
    assert all(v.device.type == "cpu" for v in final_tensors(tmp_path / "straight").values())  # saved on CPU
    assert_identical(final_tensors(tmp_path / "resumed"), final_tensors(tmp_path / "straight"))


def test_a_frozen_minilm_caches_the_captions_on_the_training_device(strict_fp32):
    """Training on CUDA encodes the dataset's captions there, to the CPU's embeddings within fp32
    summation order."""
    from noisecraft.training.build import build_text_encoder
    from noisecraft.training.config import load_config

    config = load_config("tones64")
    captions = ["a low beep followed by a high bell", "three loud drum hits"]
    _, on_gpu = build_text_encoder(config, captions, CUDA)
    _, on_cpu = build_text_encoder(config, captions)
    gpu, cpu = on_gpu(captions), on_cpu(captions)
    assert gpu.tokens.device.type == "cuda" and cpu.tokens.device.type == "cpu"
    diff = (gpu.tokens.cpu() - cpu.tokens).abs().max().item()
    _report("MiniLM caption tokens max |Δ|", diff, 1e-4)
    assert diff <= 1e-4 and torch.equal(gpu.mask.cpu(), cpu.mask)
