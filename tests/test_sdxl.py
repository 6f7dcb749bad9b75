"""SDXL (Podell et al. 2023) through noisecraft's Pipeline: two text encoders, the pooled prompt and the
size ids in the U-Net's added embedding, zero embeddings for an empty negative prompt — a diffusers
folder and an original-layout single file generate what diffusers' StableDiffusionXLPipeline generates
from the same starting latents (tiny random models, CPU, fp32)."""

from __future__ import annotations

import pytest
import torch
from sd_helpers import save_single_file, tiny_sdxl_pipeline

from noisecraft.formats.keys import CheckpointError
from noisecraft.noise import SeededNoise
from noisecraft.pipeline import Pipeline

PROMPTS = ["a lighthouse at dusk, oil painting", "a cat"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sdxl")
    pipe = tiny_sdxl_pipeline(tmp)
    pipe.save_pretrained(tmp / "folder", safe_serialization=True)
    save_single_file(pipe, tmp / "sdxl.safetensors")
    return pipe, tmp


def diffusers_images(pipe, height: int, width: int, negative: str | None = None) -> torch.Tensor:
    """diffusers' images [B, 3, H, W] in [0, 1], 10 Euler steps (trailing), guidance 5."""
    latents = SeededNoise([7, 8]).randn((4, height // 2, width // 2))  # what Pipeline draws for seeds 7, 8
    with torch.no_grad():
        return pipe(
            PROMPTS, negative_prompt=negative, num_inference_steps=10, guidance_scale=5.0, latents=latents,
            output_type="pt", height=height, width=width,
        ).images  # fmt: skip


def ours(pipe: Pipeline, **options) -> torch.Tensor:
    """Our images [B, 3, H, W] in [0, 1], as diffusers post-processes them."""
    got = pipe.sample(PROMPTS, seed=7, steps=10, sampler="euler", schedule="trailing", **options)
    return (got / 2 + 0.5).clamp(0, 1)


def test_diffusers_folder_matches_diffusers(reference):
    pipe, tmp = reference
    loaded = Pipeline.load(tmp / "folder")
    assert loaded.config.zero_empty_negative and loaded.config.guidance == 5.0
    assert loaded.latent.scale == pytest.approx(0.13025)
    want = diffusers_images(pipe, 16, 16)  # no negative prompt: zero embeddings on both sides
    assert (ours(loaded) - want).abs().max() <= 1e-4
    assert want.std() > 0.01  # a picture, not a constant


def test_negative_prompt_and_size_ids_at_another_size(reference):
    """A negative prompt is encoded, not zeroed; the size ids follow the requested width and height."""
    pipe, tmp = reference
    loaded = Pipeline.load(tmp / "folder")
    want = diffusers_images(pipe, 16, 24, negative="blurry")
    got = ours(loaded, width=24, height=16, negative_prompt="blurry")
    assert (got - want).abs().max() <= 1e-4
    zeroed = ours(loaded, width=24, height=16)
    assert (zeroed - want).abs().max() > 1e-3  # the negative prompt matters, so the check above can fail


def test_single_file_gives_the_folders_images(reference):
    pipe, tmp = reference
    folder, single = Pipeline.load(tmp / "folder"), Pipeline.load(tmp / "sdxl.safetensors")
    assert single.config.zero_empty_negative and single.latent.scale == pytest.approx(0.13025)
    assert single.net.config.image_size == 128  # a single file does not say: SDXL's native 128² latents
    assert torch.equal(ours(folder, width=16, height=16), ours(single, width=16, height=16))


def test_big_g_names_are_what_diffusers_converts(reference):
    """The single file's OpenCLIP names (ours, written by the test helper) convert back through
    diffusers' own converter to exactly the text_encoder_2 state dict, projection transposed."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from safetensors.torch import load_file

    pipe, tmp = reference
    checkpoint = load_file(tmp / "sdxl.safetensors")
    back = convert_open_clip_checkpoint(pipe.text_encoder_2, checkpoint, "conditioner.embedders.1.model.")
    theirs = pipe.text_encoder_2.state_dict()
    assert set(back) == set(theirs) - {"text_model.embeddings.position_ids"}
    assert all(torch.equal(back[k], theirs[k]) for k in back)


def test_a_file_with_one_sdxl_text_encoder_is_refused(reference, tmp_path):
    from safetensors.torch import load_file, save_file

    _, tmp = reference
    tensors = load_file(tmp / "sdxl.safetensors")
    refiner_like = {k: v for k, v in tensors.items() if not k.startswith("conditioner.embedders.0.")}
    save_file(refiner_like, tmp_path / "refiner.safetensors")
    with pytest.raises(CheckpointError, match="refiner"):
        Pipeline.load(tmp_path / "refiner.safetensors")
