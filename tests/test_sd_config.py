"""``--config DIR_OR_YAML``: what a single Stable Diffusion file's tensors cannot say (head counts,
v-prediction, the latent scale, the text layer), from a diffusers folder's configs or the original
.yaml — given, or found beside the checkpoint as A1111 finds it."""

from __future__ import annotations

import pytest
import torch
from sd_helpers import save_single_file, tiny_sd_pipeline

from noisecraft.formats.architecture import read_hints
from noisecraft.formats.keys import CheckpointError
from noisecraft.noise import SeededNoise
from noisecraft.pipeline import Pipeline

PROMPTS = ["a lighthouse at dusk", "a cat"]
V_YAML = """
model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    scale_factor: 0.18215
    unet_config:
      params: {num_heads: 2, num_head_channels: -1, use_linear_in_transformer: false}
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
      params: {freeze: true, layer: "penultimate"}
"""


@pytest.fixture(scope="module")
def odd_model(tmp_path_factory):
    """A v-predicting model with 2 heads per U-Net level and 32-wide text heads: none of it in the
    single file's shapes."""
    tmp = tmp_path_factory.mktemp("odd")
    pipe = tiny_sd_pipeline(tmp, prediction="v_prediction", unet_heads=2, text_heads=2)
    pipe.save_pretrained(tmp / "folder", safe_serialization=True)
    return pipe, tmp, save_single_file(pipe, tmp / "odd.safetensors")


def images(pipe) -> torch.Tensor:
    """[B, 3, 16, 16] in [0, 1]: ours for a Pipeline, diffusers' for theirs (6 Euler steps, trailing)."""
    if isinstance(pipe, Pipeline):
        options = dict(steps=6, sampler="euler", schedule="trailing", guidance=5.0, width=16, height=16)
        got = pipe.sample(PROMPTS, seed=7, **options)
        return (got / 2 + 0.5).clamp(0, 1)
    with torch.no_grad():
        latents = SeededNoise([7, 8]).randn((4, 8, 8))
        out = pipe(PROMPTS, num_inference_steps=6, guidance_scale=5.0, latents=latents, output_type="pt")
        return out.images


def test_a_diffusers_folder_config_makes_the_single_file_what_diffusers_runs(odd_model):
    pipe, tmp, single = odd_model
    want = images(pipe)
    guessed = Pipeline.load(single)  # SD 1's 8 heads, ε, 64-wide text heads: a different network
    assert (images(guessed) - want).abs().max() > 1e-2
    told = Pipeline.load(single, config=tmp / "folder")
    assert told.config.precond == "vp_v" and told.net.config.num_heads == (2, 2)
    assert (images(told) - want).abs().max() <= 1e-4


def test_the_original_yaml_is_read_given_or_beside_the_file(odd_model, tmp_path):
    _, _, single = odd_model
    (tmp_path / "v.yaml").write_text(V_YAML)
    hints = read_hints(tmp_path / "v.yaml")
    read = (hints.prediction, hints.heads, hints.head_width, hints.scale_factor)
    assert read == ("v_prediction", 2, None, 0.18215)
    assert hints.text == [{"skip_layers": 1}]
    beside = tmp_path / "mine.safetensors"
    beside.symlink_to(single)
    (tmp_path / "mine.yaml").write_text(V_YAML.replace("num_heads: 2", "num_heads: 4"))
    for loaded, heads in ((Pipeline.load(single, config=tmp_path / "v.yaml"), 2), (Pipeline.load(beside), 4)):
        assert loaded.config.precond == "vp_v" and loaded.net.config.num_heads == (heads, heads)
    assert Pipeline.load(beside, prediction="eps").config.precond == "vp_eps"  # the flag wins


def test_bad_configs_are_one_clear_error(odd_model, tmp_path):
    from noisecraft.cli import main

    _, tmp, single = odd_model
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    (tmp_path / "heads.yaml").write_text(V_YAML.replace("num_heads: 2", "num_heads: 1000000000"))
    (tmp_path / "python.yaml").write_text("model: !!python/object/apply:os.system ['echo hacked']\n")
    for config, message in (
        (tmp_path / "bad.yaml", "not valid YAML"),
        (tmp_path / "heads.yaml", "num_heads must be a positive count"),
        (tmp_path / "python.yaml", "not valid YAML"),  # safe_load: no constructor runs
        (tmp_path, "no unet/config.json"),
        (single, "expected a diffusers model folder or an original .yaml"),
    ):
        with pytest.raises(CheckpointError, match=message):
            Pipeline.load(single, config=config)
    with pytest.raises(CheckpointError, match="--config applies to single files"):
        Pipeline.load(tmp / "folder", config=tmp / "folder")
    assert main(["generate", "a cat", "--model", "shapes", "--config", str(tmp / "folder"), "--quiet"]) == 2
    out = tmp_path / "out"
    args = ["a cat", "--steps", "1", "--quiet", "--out", str(out), "--model", str(single), "--width", "16"]
    assert main(["generate", *args, "--height", "16", "--config", str(tmp / "folder")]) == 0
    assert len(list(out.glob("*.png"))) == 1
