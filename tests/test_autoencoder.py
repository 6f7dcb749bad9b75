"""The KL autoencoder against diffusers' AutoencoderKL, tensor for tensor; both weight formats; errors."""

from __future__ import annotations

import re

import pytest
import torch

from noisecraft.components import load_component, save_component
from noisecraft.formats import (
    first_stage_part,
    infer_vae_config,
    vae_config_from_diffusers,
    vae_from_diffusers,
    vae_from_original,
)
from noisecraft.formats.vae import ATTENTION_WEIGHT, diffusers_name, original_name
from noisecraft.model.latent import LatentSpace
from noisecraft.nets import AutoencoderConfig, AutoencoderKL

diffusers = pytest.importorskip("diffusers")
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint  # noqa: E402

TOLERANCE = 1e-5  # fp32
# (block_out_channels, layers_per_block): the brief's tiny VAE, and a three-level one whose middle
# level maps to itself in the original format's reversed decoder numbering
SHAPES = [((8, 16), 1), ((8, 16, 16), 2)]


def reference_vae(channels: tuple[int, ...], layers: int, seed: int = 0) -> torch.nn.Module:
    """A tiny diffusers AutoencoderKL whose every parameter (GroupNorm's 1s and 0s too) is perturbed."""
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(
        block_out_channels=channels,
        layers_per_block=layers,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=16,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return vae.eval()


def ours_from(reference: torch.nn.Module, channels: tuple[int, ...], layers: int) -> AutoencoderKL:
    config = AutoencoderConfig(channels=channels, layers_per_block=layers, norm_groups=4)
    vae = AutoencoderKL(config).eval()
    vae.load_state_dict(vae_from_diffusers(reference.state_dict(), config), strict=True)
    return vae


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, AutoencoderKL]:
    reference = reference_vae((8, 16), 1)
    return reference, ours_from(reference, (8, 16), 1)


@pytest.mark.parametrize("channels, layers", SHAPES)
@pytest.mark.parametrize("size", [(16, 16), (16, 24)])
def test_matches_diffusers(channels: tuple[int, ...], layers: int, size: tuple[int, int]) -> None:
    reference = reference_vae(channels, layers)
    ours = ours_from(reference, channels, layers)
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(2)).clamp(-1, 1)
    with torch.no_grad():
        posterior = reference.encode(images).latent_dist
        mean, logvar = ours.posterior(images)
        decoded_ref = reference.decode(posterior.mean).sample
        decoded = ours.decode(posterior.mean)
        drawn_ref = posterior.sample(generator=torch.Generator().manual_seed(3))
        drawn = ours.sample(images, torch.Generator().manual_seed(3))
    f = 2 ** (len(channels) - 1)
    assert mean.shape == (1, 4, size[0] // f, size[1] // f)
    assert decoded.shape == images.shape
    assert decoded_ref.std() > 0.1 and posterior.mean.std() > 0.1  # a comparison of non-trivial outputs
    diffs = max_diff(mean, posterior.mean), max_diff(decoded, decoded_ref)
    print(f"max |Δ| {channels} {size}: mean {diffs[0]:.2e}, decode {diffs[1]:.2e}")
    assert max_diff(ours.encode(images), posterior.mean) <= TOLERANCE
    assert max_diff(logvar, posterior.logvar) <= TOLERANCE
    assert max_diff(decoded, decoded_ref) <= TOLERANCE
    assert max_diff(drawn, drawn_ref) <= TOLERANCE


def test_log_variance_is_clamped_as_in_diffusers() -> None:
    reference = reference_vae((8, 16), 1)
    with torch.no_grad():
        reference.quant_conv.bias[4:6] += 100.0  # two latent channels' log-variance far above 20
        reference.quant_conv.bias[6:] -= 100.0  # two far below -30
    ours = ours_from(reference, (8, 16), 1)
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(6)) * 2 - 1
    with torch.no_grad():
        expected = reference.encode(images).latent_dist.logvar
        _, logvar = ours.posterior(images)
    assert expected[:, :2].max() == 20.0 and expected[:, 2:].min() == -30.0
    assert max_diff(logvar, expected) <= TOLERANCE


@pytest.mark.parametrize("channels, layers", SHAPES)
def test_config_from_shapes_and_from_diffusers_json(channels: tuple[int, ...], layers: int) -> None:
    reference = reference_vae(channels, layers)
    expected = AutoencoderConfig(channels=channels, layers_per_block=layers, norm_groups=4)
    assert infer_vae_config(reference.state_dict(), diffusers_name, norm_groups=4) == expected
    assert vae_config_from_diffusers(dict(reference.config)) == expected
    sdxl = {**reference.config, "scaling_factor": 0.13025, "shift_factor": None}
    assert vae_config_from_diffusers(sdxl).scale_factor == 0.13025
    with pytest.raises(ValueError, match="mid_block_add_attention"):
        vae_config_from_diffusers({**reference.config, "mid_block_add_attention": False})
    with pytest.raises(ValueError, match="down_block_types"):
        vae_config_from_diffusers({**reference.config, "down_block_types": ["AttnDownEncoderBlock2D"] * 2})


def tiny_config(reference: torch.nn.Module) -> AutoencoderConfig:
    """The config read from the reference's shapes (norm groups are not in them)."""
    return infer_vae_config(reference.state_dict(), diffusers_name, norm_groups=4)


def original_checkpoint(reference: torch.nn.Module, levels: int) -> dict[str, torch.Tensor]:
    """A single-file SD checkpoint's VAE part, built with our original-format names (checked below)."""
    state = vae_from_diffusers(reference.state_dict(), tiny_config(reference))
    checkpoint = {"model.diffusion_model.out.0.weight": torch.ones(3)}  # a U-Net tensor to leave out
    for key, tensor in state.items():
        if ATTENTION_WEIGHT.search(key):
            tensor = tensor[:, :, None, None]  # the LDM code's attention projections are 1×1 convolutions
        checkpoint["first_stage_model." + original_name(key, levels)] = tensor
    return checkpoint


@pytest.mark.parametrize("channels, layers", SHAPES)
def test_original_format(channels: tuple[int, ...], layers: int) -> None:
    reference = reference_vae(channels, layers)
    checkpoint = original_checkpoint(reference, len(channels))
    # Our original naming is the one diffusers' own single-file converter reads: all tensors back.
    converted = convert_ldm_vae_checkpoint(checkpoint, dict(reference.config))
    expected = reference.state_dict()
    assert sorted(converted) == sorted(expected)
    assert all(torch.equal(converted[k], expected[k]) for k in expected)
    # Our loader reads it into the same weights as the diffusers path.
    part = first_stage_part(checkpoint)
    config = infer_vae_config(part, lambda key: original_name(key, 0), norm_groups=4)  # encoder keys only
    assert config == AutoencoderConfig(channels=channels, layers_per_block=layers, norm_groups=4)
    ours = vae_from_original(part, config)
    via_diffusers = vae_from_diffusers(expected, tiny_config(reference))
    assert sorted(ours) == sorted(via_diffusers)
    assert all(torch.equal(ours[k], via_diffusers[k]) for k in ours)


def test_original_names_literally(pair) -> None:
    reference, _ = pair
    part = first_stage_part(original_checkpoint(reference, 2))
    diffusers_state = reference.state_dict()
    literal = {  # original LDM name → diffusers name, for the two-level VAE
        "encoder.conv_in.weight": "encoder.conv_in.weight",
        "encoder.down.0.block.0.norm1.weight": "encoder.down_blocks.0.resnets.0.norm1.weight",
        "encoder.down.0.downsample.conv.weight": "encoder.down_blocks.0.downsamplers.0.conv.weight",
        "encoder.down.1.block.0.nin_shortcut.weight": "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
        "encoder.mid.block_1.conv1.bias": "encoder.mid_block.resnets.0.conv1.bias",
        "encoder.mid.attn_1.norm.weight": "encoder.mid_block.attentions.0.group_norm.weight",
        "encoder.mid.attn_1.q.weight": "encoder.mid_block.attentions.0.to_q.weight",
        "decoder.mid.attn_1.proj_out.weight": "decoder.mid_block.attentions.0.to_out.0.weight",
        "encoder.norm_out.bias": "encoder.conv_norm_out.bias",
        "quant_conv.weight": "quant_conv.weight",
        "post_quant_conv.bias": "post_quant_conv.bias",
        "decoder.up.0.block.1.conv2.weight": "decoder.up_blocks.1.resnets.1.conv2.weight",  # up.0: the last
        "decoder.up.1.block.0.conv1.weight": "decoder.up_blocks.0.resnets.0.conv1.weight",
        "decoder.up.1.upsample.conv.weight": "decoder.up_blocks.0.upsamplers.0.conv.weight",
        "decoder.up.0.block.0.nin_shortcut.bias": "decoder.up_blocks.1.resnets.0.conv_shortcut.bias",
    }
    for original, theirs in literal.items():
        tensor = part[original]
        if original.endswith(("q.weight", "proj_out.weight")):
            assert tensor.shape[2:] == (1, 1)
            tensor = tensor[:, :, 0, 0]
        assert torch.equal(tensor, diffusers_state[theirs]), original


def test_deprecated_diffusers_attention_names(pair) -> None:
    reference, _ = pair
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for key, tensor in reference.state_dict().items():
        for new, deprecated in renames.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{deprecated}.")
        old[key] = tensor
    assert "decoder.mid_block.attentions.0.proj_attn.bias" in old
    current = vae_from_diffusers(reference.state_dict(), tiny_config(reference))
    converted = vae_from_diffusers(old, tiny_config(reference))
    assert all(torch.equal(converted[k], current[k]) for k in current)


@pytest.mark.parametrize(
    "change, named",
    [
        (
            lambda s: s.pop("decoder.up_blocks.1.resnets.1.norm2.weight"),
            "decoder.up_blocks.1.resnets.1.norm2.weight",
        ),
        (lambda s: s.update({"encoder.extra.weight": torch.zeros(2)}), "encoder.extra.weight"),
        (lambda s: s.update({"encoder.conv_in.bias": torch.zeros(9)}), "encoder.conv_in.bias"),
        (
            lambda s: s.update({"decoder.mid_block.attentions.0.to_k.weight": torch.zeros(16, 16, 1, 1)}),
            "to_k.weight",
        ),
    ],
    ids=["missing", "unused", "wrong-shape", "conv-shaped-linear"],
)
def test_misfit_weights_are_named(pair, change, named: str) -> None:
    reference, ours = pair
    state = dict(reference.state_dict())
    change(state)
    with pytest.raises(ValueError, match=re.escape(named)):
        vae_from_diffusers(state, ours.config)
    with pytest.raises(ValueError, match=re.escape(named)):
        vae_from_diffusers(state, infer_vae_config(state, diffusers_name, norm_groups=4))


def test_original_misfits_are_named(pair) -> None:
    reference, ours = pair
    part = first_stage_part(original_checkpoint(reference, 2))
    part["loss.logvar"] = torch.zeros(())
    with pytest.raises(ValueError, match=re.escape("unused 'loss.logvar'")):
        vae_from_original(part, ours.config)
    del part["loss.logvar"], part["decoder.up.0.block.1.conv2.weight"]
    with pytest.raises(ValueError, match=re.escape("missing 'decoder.up.0.block.1.conv2.weight'")):
        vae_from_original(part, ours.config)
    with pytest.raises(ValueError, match="first_stage_model"):
        first_stage_part({"model.diffusion_model.x": torch.zeros(1)})


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="norm_groups"):
        AutoencoderConfig(channels=(8, 12), norm_groups=8)
    with pytest.raises(ValueError, match="scale_factor"):
        AutoencoderConfig(scale_factor=0.0)
    with pytest.raises(ValueError, match="channels"):
        AutoencoderConfig(channels=())


def test_latent_shape_and_input_checks(pair) -> None:
    _, ours = pair
    assert ours.latent_shape((3, 16, 24)) == (4, 8, 12)
    assert AutoencoderKL(AutoencoderConfig(channels=(32, 32, 32, 32))).latent_shape((3, 512, 768)) == (
        4,
        64,
        96,
    )
    with pytest.raises(ValueError, match="divisible"):
        ours.latent_shape((3, 15, 16))
    with pytest.raises(ValueError, match="divisible"):
        ours.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match="channels"):
        ours.decode(torch.zeros(1, 3, 8, 8))


def test_save_load_round_trip(pair, tmp_path) -> None:
    _, ours = pair
    save_component(ours, tmp_path / "vae")
    loaded = load_component(tmp_path / "vae", expected=AutoencoderKL)
    assert isinstance(loaded, AutoencoderKL) and loaded.config == ours.config
    ours.save_pretrained(tmp_path / "vae-2")  # diffusers' spelling of the same two functions
    again = AutoencoderKL.from_pretrained(tmp_path / "vae-2")
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(loaded.decode(latents), ours.decode(latents))
        assert torch.equal(again.decode(latents), ours.decode(latents))


def test_as_latent_space(pair, tmp_path) -> None:
    _, ours = pair
    save_component(ours, tmp_path / "vae")
    space = LatentSpace.from_folder(str(tmp_path / "vae"), ours.config.scale_factor)
    images = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        latents = ours.encode(images)
        assert space.sample_shape((3, 16, 24)) == (4, 8, 12)
        assert max_diff(space.encode(images), latents * 0.18215) <= TOLERANCE  # LatentSpace scales, we do not
        assert max_diff(space.decode(space.encode(images)), ours.decode(latents)) <= TOLERANCE


def test_stable_diffusion_sized_key_maps() -> None:
    """SD 1/2/XL's VAE layout (4 levels, 2 blocks each, widths to 512): every tensor maps (meta device)."""
    sd_config = {
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "scaling_factor": 0.13025,
    }
    with torch.device("meta"):
        reference = diffusers.AutoencoderKL(**sd_config)
    config = vae_config_from_diffusers(dict(reference.config))
    assert config == AutoencoderConfig(scale_factor=0.13025)
    state = vae_from_diffusers(reference.state_dict(), config)
    assert len(state) == len(reference.state_dict()) == 248
    assert sum(t.numel() for t in state.values()) == 83_653_863  # the SD VAE's parameter count
    original = {
        original_name(k, 4): t[:, :, None, None] if ATTENTION_WEIGHT.search(k) else t
        for k, t in state.items()
    }
    assert original["decoder.up.3.block.2.conv2.weight"] is state["decoder.levels.0.blocks.2.conv2.weight"]
    converted = convert_ldm_vae_checkpoint(original, dict(reference.config))
    assert {k: t.shape for k, t in converted.items()} == {
        k: t.shape for k, t in reference.state_dict().items()
    }
