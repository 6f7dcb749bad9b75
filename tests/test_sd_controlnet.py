"""SD ControlNet weights (a diffusers ControlNetModel folder, an original single file) load into our
ControlNet and give diffusers' residuals and StableDiffusionControlNetPipeline's images (tiny, random)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from sd_helpers import tiny_sd_pipeline

from noisecraft.conditioning import Conditioning
from noisecraft.formats.controlnet import controlnet_map
from noisecraft.model import ControlSpec, load_control_branch
from noisecraft.noise import SeededNoise
from noisecraft.pipeline import Pipeline

PROMPTS = ["a lighthouse at dusk", "a cat"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from diffusers import ControlNetModel

    tmp = tmp_path_factory.mktemp("sdcn")
    pipe = tiny_sd_pipeline(tmp)
    pipe.save_pretrained(tmp / "folder", safe_serialization=True)
    torch.manual_seed(3)
    controlnet = ControlNetModel.from_unet(
        pipe.unet, conditioning_embedding_out_channels=(16, 32)
    ).eval()  # 2× (the VAE)
    with torch.no_grad():  # the zero convolutions made non-zero, so the control changes the picture
        for p in controlnet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    controlnet.save_pretrained(tmp / "controlnet", safe_serialization=True)
    return pipe, controlnet, tmp


def _single_file(controlnet, tmp, branch):
    """The diffusers tensors under their original names (``control_model.`` prefix), as one file."""
    theirs = controlnet.state_dict()
    d, o = controlnet_map(branch.config, "diffusers"), controlnet_map(branch.config, "original")
    out = {}
    for key in branch.state_dict():
        for a, b in zip(d.entries[key], o.entries[key]):
            out[f"control_model.{b}"] = theirs[a].contiguous()
    save_file(out, tmp / "control.safetensors")
    return tmp / "control.safetensors"


def test_residuals_match_diffusers_for_folder_and_single_file(reference):
    pipe, controlnet, tmp = reference
    loaded = Pipeline.load(tmp / "folder")
    branch = load_control_branch(tmp / "controlnet", loaded.net)
    g = torch.Generator().manual_seed(0)
    x, hint = torch.randn(2, 4, 8, 8, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    tokens, t = torch.randn(2, 7, 64, generator=g), torch.tensor([999.0, 420.0])
    cond = Conditioning(tokens, torch.ones(2, 7, dtype=torch.bool), torch.zeros(2, 64))
    with torch.no_grad():
        want_down, want_mid = controlnet(x, t, tokens, controlnet_cond=hint, return_dict=False)
        got_down, got_mid = branch(x, t, cond, hint)
        file_down, file_mid = load_control_branch(_single_file(controlnet, tmp, branch), loaded.net)(
            x, t, cond, hint
        )
    assert len(got_down) == len(want_down) and want_mid.abs().max() > 1e-3
    for got, file, want in zip([*got_down, got_mid], [*file_down, file_mid], [*want_down, want_mid]):
        assert (got - want).abs().max() <= 1e-5 and torch.equal(got, file)


def test_controlled_euler_image_matches_diffusers(reference):
    from diffusers import StableDiffusionControlNetPipeline

    pipe, controlnet, tmp = reference
    full = StableDiffusionControlNetPipeline(**pipe.components, controlnet=controlnet)
    from PIL import Image

    g = torch.Generator().manual_seed(1)
    hint = Image.fromarray((torch.rand(16, 16, 3, generator=g) * 255).byte().numpy())
    latents = SeededNoise([7, 8]).randn((4, 8, 8))
    with torch.no_grad():
        want = full(PROMPTS, image=hint, num_inference_steps=10, guidance_scale=7.5, latents=latents,
                    output_type="pt", height=16, width=16,
                    controlnet_conditioning_scale=0.8).images  # fmt: skip
    loaded = Pipeline.load(tmp / "folder")
    spec = ControlSpec(hint, "layout", str(tmp / "controlnet"), 0.8)
    options = dict(seed=7, steps=10, sampler="euler", schedule="trailing", guidance=7.5)
    got = (loaded.sample(PROMPTS, controls=(spec,), **options) / 2 + 0.5).clamp(0, 1)
    plain = (loaded.sample(PROMPTS, **options) / 2 + 0.5).clamp(0, 1)
    zero = (loaded.sample(PROMPTS, controls=(ControlSpec(hint, "layout", str(tmp / "controlnet"), 0.0),),
                          **options) / 2 + 0.5).clamp(0, 1)  # fmt: skip
    assert (got - want).abs().max() <= 1e-4
    assert (got - plain).abs().max() > 1e-2 and torch.equal(zero, plain)
