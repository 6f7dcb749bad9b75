"""Stable Diffusion weights through noisecraft's Pipeline: a diffusers folder and an original-layout
single file load into our modules and generate what diffusers' StableDiffusionPipeline generates from
the same starting latents (tiny random models, CPU, fp32)."""

from __future__ import annotations

import pytest
import torch
from sd_helpers import save_single_file, tiny_sd_pipeline

from noisecraft.formats.keys import CheckpointError
from noisecraft.noise import SeededNoise
from noisecraft.pipeline import Pipeline

PROMPTS = ["a lighthouse at dusk, oil painting", "a cat"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sd")
    pipe = tiny_sd_pipeline(tmp)
    pipe.save_pretrained(tmp / "folder", safe_serialization=True)
    return pipe, tmp


def diffusers_images(pipe, latents: torch.Tensor, steps: int, guidance: float) -> torch.Tensor:
    """diffusers' images [B, 3, H, W] in [0, 1]."""
    with torch.no_grad():
        return pipe(
            PROMPTS, num_inference_steps=steps, guidance_scale=guidance, latents=latents, output_type="pt",
            height=16, width=16,
        ).images  # fmt: skip


def ours(pipe: Pipeline, **options) -> torch.Tensor:
    """Our images [B, 3, H, W] in [0, 1], as diffusers post-processes them."""
    return (pipe.sample(PROMPTS, seed=7, **options) / 2 + 0.5).clamp(0, 1)


def starting_noise() -> torch.Tensor:
    return SeededNoise([7, 8]).randn((4, 8, 8))  # what Pipeline draws for seeds 7, 8


def test_diffusers_folder_euler_matches_diffusers(reference):
    pipe, tmp = reference
    loaded = Pipeline.load(tmp / "folder")
    assert loaded.config.image_size == 16 and loaded.config.precond == "vp_eps"
    want = diffusers_images(pipe, starting_noise(), steps=10, guidance=7.5)  # Euler, trailing timesteps
    got = ours(loaded, steps=10, sampler="euler", schedule="trailing", guidance=7.5)
    assert (got - want).abs().max() <= 1e-4
    assert want.std() > 0.01  # a picture, not a constant


def test_ddim_matches_diffusers(reference):
    from diffusers import DDIMScheduler

    pipe, tmp = reference
    ddim = DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=True, steps_offset=0)
    pipe_ddim = type(pipe)(**{**pipe.components, "scheduler": ddim})
    loaded = Pipeline.load(tmp / "folder")
    sigma_max = float(loaded.denoiser.sigma_table[-1])
    latents = starting_noise() * sigma_max / (1 + sigma_max**2) ** 0.5  # the same point, on the VP scale
    want = diffusers_images(pipe_ddim, latents, steps=10, guidance=5.0)
    got = ours(loaded, steps=10, sampler="ddim", schedule="trailing", guidance=5.0)
    assert (got - want).abs().max() <= 1e-4


def test_single_file_gives_the_folders_images(reference):
    pipe, tmp = reference
    single = save_single_file(pipe, tmp / "model.safetensors")
    options = dict(steps=4, sampler="dpmpp_2m", guidance=4.0, width=16, height=16)  # a file: 512² unless told
    from_file, from_folder = Pipeline.load(single), Pipeline.load(tmp / "folder")
    torch.testing.assert_close(ours(from_file, **options), ours(from_folder, **options), rtol=0, atol=1e-5)


def test_vae_file_swaps_the_autoencoder(reference):
    from safetensors.torch import save_file

    pipe, tmp = reference
    vae_state = {k: v + 0.01 for k, v in pipe.vae.state_dict().items()}  # another autoencoder
    save_file(vae_state, str(tmp / "vae.safetensors"))
    plain = Pipeline.load(tmp / "folder")
    swapped = Pipeline.load(tmp / "folder", vae=tmp / "vae.safetensors")
    assert not torch.equal(ours(plain, steps=2), ours(swapped, steps=2))


def test_bad_weights_are_one_clear_error(reference, tmp_path):
    from safetensors.torch import save_file

    pipe, tmp = reference
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="pickled checkpoint is never loaded"):
        Pipeline.load(tmp_path / "model.ckpt")
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a Stable Diffusion checkpoint"):
        Pipeline.load(tmp_path / "other.safetensors")
    whole = save_single_file(pipe, tmp_path / "whole.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        Pipeline.load(tmp_path / "truncated.safetensors")
    with pytest.raises(ValueError, match="multiples of 4, got 18×16"):  # autoencoder 2 × U-Net 2
        Pipeline.load(tmp / "folder").generate("x", width=18, height=16, steps=1)


def test_the_server_serves_it_at_the_asked_size(reference):
    """`noisecraft serve --model FOLDER`: A1111's width × height reach the latent model (no stretching),
    a size it cannot draw is a 422 on width, and the image equals the Python call's."""
    import httpx
    from server_helpers import decode_png, pixels, serve

    from noisecraft.server.app import create_app
    from noisecraft.server.limits import Limits
    from noisecraft.server.models import ModelRegistry

    _, tmp = reference
    models = ModelRegistry.load([str(tmp / "folder")])
    pipe = models.pipelines["folder"]
    limits = Limits(queue_size=2, max_batch=4, max_steps=50, max_pixels=4096, max_prompt_chars=200)
    body = {"prompt": "a cat", "seed": 3, "steps": 3, "width": 24, "height": 16, "sampler_name": "Euler"}
    (want,) = pipe.generate("a cat", seed=3, steps=3, sampler="euler", guidance=7.0, width=24, height=16)
    with serve(create_app(models, limits)) as url, httpx.Client(base_url=url, timeout=60) as client:
        answer = client.post("/sdapi/v1/txt2img", json=body).json()
        image = decode_png(answer["images"][0])
        assert image.size == (24, 16) and (pixels(image) == pixels(want)).all()
        bad = client.post("/sdapi/v1/txt2img", json={**body, "width": 18})
        assert bad.status_code == 422 and "multiples of 4" in bad.text
        listed = client.get("/sdapi/v1/sd-models").json()
        assert [m["model_name"] for m in listed] == ["folder"]
        vaes = client.get("/sdapi/v1/sd-vae").json()  # an SD model's autoencoder, named, no path
        assert vaes == [{"model_name": "folder autoencoder", "filename": "folder/autoencoder"}]
        sgm = client.post("/sdapi/v1/txt2img", json={**body, "scheduler": "SGM Uniform"}).json()
        (want,) = pipe.generate("a cat", seed=3, steps=3, sampler="euler", guidance=7.0, width=24, height=16,
                                schedule="sgm_uniform")  # fmt: skip
        assert (pixels(decode_png(sgm["images"][0])) == pixels(want)).all()


def test_cli_generates_and_converts(reference, tmp_path):
    """`noisecraft generate --model FOLDER --width --height` and `noisecraft convert`: the converted
    noisecraft folder gives the same pixels, and converting onto an existing folder is refused."""
    import numpy as np
    from PIL import Image

    from noisecraft.cli import main

    _, tmp = reference
    args = ["a cat", "--steps", "2", "--width", "16", "--height", "24", "--quiet", "--seed", "1"]
    assert main(["generate", *args, "--model", str(tmp / "folder"), "--out", str(tmp_path / "a")]) == 0
    assert main(["convert", str(tmp / "folder"), str(tmp_path / "converted")]) == 0
    assert main(["convert", str(tmp / "folder"), str(tmp_path / "converted")]) == 2  # exists: refused
    converted = str(tmp_path / "converted")
    assert main(["generate", *args, "--model", converted, "--out", str(tmp_path / "b")]) == 0
    (a,), (b,) = (tmp_path / "a").glob("*.png"), (tmp_path / "b").glob("*.png")
    with Image.open(a) as first, Image.open(b) as second:
        assert first.size == (16, 24) and np.array_equal(np.asarray(first), np.asarray(second))


def test_live_previews_are_cheap_linear_maps_at_image_size(reference):
    """Step callbacks see x and x̂0 through the latent space's linear preview at image size, not a decode
    per step: one decode per generation."""
    _, tmp = reference
    loaded = Pipeline.load(tmp / "folder")
    autoencoder, decodes = loaded.latent.autoencoder, []
    original = autoencoder.decode
    autoencoder.decode = lambda z: decodes.append(z.shape) or original(z)
    steps = []
    loaded.generate("a cat", steps=3, callback=steps.append)
    assert len(decodes) == 1 and len(steps) == 3
    assert all(s.denoised.shape == (1, 3, 16, 16) and s.x.shape == (1, 3, 16, 16) for s in steps)


class PoolingAutoencoder(torch.nn.Module):
    """A linear stand-in: latents are 4×4-pooled colours mixed by a fixed matrix (plus a constant)."""

    config = type("Config", (), {"downsampling": 4, "in_channels": 3})()

    def __init__(self):
        super().__init__()
        self.mix = torch.tensor([[0.5, -1.0, 0.2, 0.0], [1.0, 0.3, -0.4, 0.0], [0.1, 0.2, 0.9, 0.0]])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.avg_pool2d(images, 4)  # [B, 3, h, w]
        return torch.einsum("bchw,cd->bdhw", pooled, self.mix) + 0.3

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise AssertionError("previews must not decode")


def test_the_preview_map_is_fitted_to_the_latent_space():
    """Where latents are a linear function of the colours, the fitted map recovers them exactly."""
    import torch.nn.functional as F

    from noisecraft.model import LatentSpace

    latent = LatentSpace(PoolingAutoencoder(), scale=0.5)
    g = torch.Generator().manual_seed(5)
    picture = F.avg_pool2d(torch.rand(2, 3, 16, 16, generator=g) * 2 - 1, 4)  # constant per 4×4 cell
    picture = F.interpolate(picture, scale_factor=4, mode="nearest")
    torch.testing.assert_close(latent.preview(latent.encode(picture)), picture, rtol=0, atol=1e-4)


def test_img2img_and_inpainting_on_a_latent_model(reference):
    """img2img starts from the encoded picture (strength 1 ignores it); inpainting keeps every pixel
    outside the mask exactly and repaints inside it."""
    import numpy as np
    from PIL import Image

    _, tmp = reference
    pipe = Pipeline.load(tmp / "folder")
    g = torch.Generator().manual_seed(2)
    picture = Image.fromarray((torch.rand(16, 16, 3, generator=g) * 255).byte().numpy())
    generated = pipe.generate("a cat", steps=4, seed=1)[0]
    same_noise = pipe.img2img("a cat", picture, strength=1.0, steps=4, seed=1)[0]
    assert np.array_equal(np.asarray(generated), np.asarray(same_noise))
    edited = pipe.img2img("a cat", picture, strength=0.5, steps=4, seed=1)[0]
    assert not np.array_equal(np.asarray(edited), np.asarray(generated))
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    painted = np.asarray(pipe.inpaint("a cat", picture, Image.fromarray(mask), steps=4, seed=1)[0])
    kept = mask == 0
    assert np.array_equal(painted[kept], np.asarray(picture)[kept])
    assert not np.array_equal(painted[~kept], np.asarray(picture)[~kept])


def test_sd2_single_file_with_open_clip_text_and_v_prediction(tmp_path):
    """An SD 2-style single file (OpenCLIP text tower, linear projections, v-prediction): the OpenCLIP names
    are what diffusers' converter reads, and the image is diffusers' SD 2 pipeline's (whose text encoder
    stores the tower without its last layer and reads its output)."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from sd_helpers import open_clip_names
    from transformers import CLIPTextModel

    pipe = tiny_sd_pipeline(tmp_path, prediction="v_prediction", sd2=True)
    names = {f"cond_stage_model.model.{k}": v for k, v in open_clip_names(pipe.text_encoder).items()}
    back = {
        k.removeprefix("text_model."): v
        for k, v in convert_open_clip_checkpoint(pipe.text_encoder, names).items()
    }
    theirs = {k.removeprefix("text_model."): v for k, v in pipe.text_encoder.state_dict().items()}
    assert {k for k in theirs if "position_ids" not in k} <= set(back)
    assert all(torch.equal(back[k], theirs[k]) for k in theirs if "position_ids" not in k)
    single = save_single_file(pipe, tmp_path / "sd2.safetensors", open_clip=True)
    loaded = Pipeline.load(single, prediction="v")
    layers = pipe.text_encoder.config.num_hidden_layers  # diffusers' SD 2 text encoder: the last one dropped
    short = CLIPTextModel(
        type(pipe.text_encoder.config)(
            **{**pipe.text_encoder.config.to_dict(), "num_hidden_layers": layers - 1}
        )
    )
    short.load_state_dict(
        {k: v for k, v in pipe.text_encoder.state_dict().items() if f"layers.{layers - 1}." not in k}
    )
    reference = type(pipe)(**{**pipe.components, "text_encoder": short.eval()})
    want = diffusers_images(reference, starting_noise(), steps=6, guidance=5.0)
    got = ours(loaded, steps=6, sampler="euler", schedule="trailing", guidance=5.0, width=16, height=16)
    assert (got - want).abs().max() <= 1e-4 and want.std() > 0.01


def test_an_unknown_unet_input_is_refused_before_loading(reference, tmp_path):
    import json
    import shutil

    _, tmp = reference
    folder = shutil.copytree(tmp / "folder", tmp_path / "seven")
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "in_channels": 7}))
    with pytest.raises(CheckpointError, match="7 input channels is not supported"):
        Pipeline.load(folder)


def test_an_inpainting_unet_repaints_what_diffusers_repaints(tmp_path):
    """A 9-channel inpainting U-Net (latents + mask + masked-image latents) through ``inpaint``: inside the
    mask the image is what diffusers' StableDiffusionInpaintPipeline makes from the same latents, the same
    masked-image latents (ours, the posterior mean) and mask; outside it every pixel is kept exactly."""
    import numpy as np
    from PIL import Image

    pipe = tiny_sd_pipeline(tmp_path, inpainting=True)
    pipe.save_pretrained(tmp_path / "folder", safe_serialization=True)
    loaded = Pipeline.load(tmp_path / "folder")
    assert loaded.inpainting_net
    g = torch.Generator().manual_seed(3)
    picture = Image.fromarray((torch.rand(16, 16, 3, generator=g) * 255).byte().numpy())
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 2:14] = 255
    init = torch.from_numpy(np.asarray(picture)).permute(2, 0, 1).float()[None] / 127.5 - 1  # [1, 3, 16, 16]
    keep = torch.from_numpy(mask == 0).float()[None, None]  # [1, 1, 16, 16]
    options = dict(steps=6, sampler="euler", schedule="trailing", guidance=5.0, seed=7)
    got = (loaded.sample(["a cat"], init=init, keep=keep, **options) / 2 + 0.5).clamp(0, 1)
    masked_latents, noise = loaded.latent.encode(init * keep), SeededNoise([7]).randn((4, 8, 8))
    with torch.no_grad():
        want = pipe(
            "a cat", image=picture, mask_image=Image.fromarray(mask), masked_image_latents=masked_latents,
            latents=noise, num_inference_steps=6, guidance_scale=5.0, output_type="pt", height=16, width=16,
        ).images  # fmt: skip
    inside = ~(keep.bool().expand_as(got))
    assert (got - want)[inside].abs().max() <= 1e-4 and want[inside].std() > 0.01
    assert torch.equal(got[~inside], ((init / 2 + 0.5).clamp(0, 1))[~inside])
    painted = np.asarray(loaded.inpaint("a cat", picture, Image.fromarray(mask), **options)[0])
    assert np.array_equal(painted[mask == 0], np.asarray(picture)[mask == 0])


def test_deep_cache_runs_an_sd_unet_in_full_every_nth_step(reference):
    _, tmp = reference
    loaded = Pipeline.load(tmp / "folder")
    runs = [0]
    loaded.net.mid[0].register_forward_hook(lambda *_: runs.__setitem__(0, runs[0] + 1))
    plain = ours(loaded, steps=6, sampler="euler", guidance=7.5)
    assert runs[0] == 6  # 2 prompts + their unguided twins: one chunk of 4 rows per step
    runs[0] = 0
    cached = ours(loaded, steps=6, sampler="euler", guidance=7.5, deep_cache=2)
    assert runs[0] == 3 and loaded.net.feature_cache is None
    assert 0 < (cached - plain).abs().max() < 0.5  # close to the plain image, and not it
