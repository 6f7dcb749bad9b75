"""Stable Diffusion U-Net weights in noisecraft's own UNet: every tensor maps, outputs equal diffusers'.

Tiny random diffusers ``UNet2DConditionModel``s in the SD 1 layout (1×1-convolution projections, one
transformer per attention level) and the SD 2 layout (linear projections, per-level head counts,
two-deep transformers). The original single-file names are checked against diffusers' own converter.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from noisecraft.conditioning import Conditioning
from noisecraft.formats.keys import CheckpointError, convert
from noisecraft.formats.unet import unet_config_from_diffusers, unet_map
from noisecraft.nets.unet import UNet

LAYOUTS = {
    "sd1": dict(
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2,
    ),
    "sd2": dict(
        block_out_channels=(16, 32, 32), down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2, attention_head_dim=(2, 4, 4),
        use_linear_projection=True, transformer_layers_per_block=(1, 2, 2),
    ),
    "sdxl": dict(  # no attention at the first level; added embedding of a 12-wide pooled prompt + sizes
        block_out_channels=(16, 32, 32), down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2,
        up_block_types=("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",), attention_head_dim=(2, 4, 4),
        use_linear_projection=True, transformer_layers_per_block=(1, 2, 3),
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=60,
    ),
}  # fmt: skip
POOLED = {"sdxl": 12}


def reference(layout: str) -> UNet2DConditionModel:
    """A tiny random diffusers U-Net whose zero-initialised parts are made non-zero too."""
    torch.manual_seed(0)
    net = UNet2DConditionModel(
        layers_per_block=2, cross_attention_dim=16, norm_num_groups=8, sample_size=16, in_channels=4,
        out_channels=4, **LAYOUTS[layout],
    ).eval()  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def ours_from(ref: UNet2DConditionModel) -> UNet:
    config = unet_config_from_diffusers(dict(ref.config))
    net = UNet(config).eval()
    theirs = ref.state_dict()
    net.load_state_dict(convert(unet_map(config, "diffusers"), net.state_dict(), theirs, theirs.get, "unet"))
    return net


@pytest.mark.parametrize("layout", LAYOUTS)
def test_diffusers_unet_maps_tensor_for_tensor_and_outputs_match(layout):
    ref = reference(layout)
    net = ours_from(ref)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in ref.parameters())
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 16, 24, generator=g), torch.randn(2, 7, 16, generator=g)  # not square
    pooled = torch.randn(2, POOLED.get(layout, 16), generator=g)
    cond = Conditioning(context, torch.ones(2, 7, dtype=torch.bool), pooled)
    added = None
    if layout == "sdxl":  # original size, crop, target size of an uncropped 128×192 image (8 pixels a cell)
        added = {"text_embeds": pooled, "time_ids": torch.tensor([[128.0, 192, 0, 0, 128, 192]] * 2)}
    for t in (1.0, 261.0, 999.0):
        timesteps = torch.tensor([t, t])
        with torch.no_grad():
            want = ref(x, timesteps, encoder_hidden_states=context, added_cond_kwargs=added).sample
            got = net(x, timesteps, cond)
        assert (got - want).abs().max() <= 1e-5, (layout, t)
        assert want.abs().max() > 0.1  # the comparison is not between two zeros


@pytest.mark.parametrize("layout", LAYOUTS)
def test_original_single_file_names_are_what_diffusers_converts(layout):
    """Our original-layout names, filled from the diffusers tensors they stand for, convert back through
    diffusers' own single-file converter to exactly the diffusers state dict."""
    ref = reference(layout)
    config = unet_config_from_diffusers(dict(ref.config))
    diffusers_map, original_map = unet_map(config, "diffusers"), unet_map(config, "original")
    theirs = ref.state_dict()
    original = {}
    for key in UNet(config).state_dict():
        for d_name, o_name in zip(diffusers_map.entries[key], original_map.entries[key], strict=True):
            original[f"model.diffusion_model.{o_name}"] = theirs[d_name]
    back = convert_ldm_unet_checkpoint(original, dict(ref.config))
    assert set(back) == set(theirs)
    assert all(torch.equal(back[k], theirs[k]) for k in theirs)


def test_missing_extra_and_misshapen_tensors_are_named():
    ref = reference("sd1")
    config = unet_config_from_diffusers(dict(ref.config))
    target, tensor_map = UNet(config).state_dict(), unet_map(config, "diffusers")
    theirs = ref.state_dict()

    def attempt(tensors: dict) -> None:
        convert(tensor_map, target, tensors, tensors.get, "unet")

    with pytest.raises(CheckpointError, match="lacks down_blocks.0.resnets.1.conv1.weight"):
        attempt({k: v for k, v in theirs.items() if k != "down_blocks.0.resnets.1.conv1.weight"})
    with pytest.raises(CheckpointError, match="extra.weight in the checkpoint belongs to nothing"):
        attempt({**theirs, "extra.weight": torch.zeros(1)})
    bad = {**theirs, "conv_in.weight": torch.zeros(32, 4, 5, 5)}
    with pytest.raises(CheckpointError, match="conv_in.weight has shape 32×4×5×5"):
        attempt(bad)


def test_unsupported_configs_are_refused():
    config = dict(reference("sd1").config)
    with pytest.raises(ValueError, match="addition_embed_type='image' is not supported"):
        unet_config_from_diffusers({**config, "addition_embed_type": "image"})
    with pytest.raises(ValueError, match="'text_time' needs"):
        unet_config_from_diffusers({**config, "addition_embed_type": "text_time"})
    with pytest.raises(ValueError, match="down_block_types"):
        unet_config_from_diffusers(
            {**config, "down_block_types": ["SimpleCrossAttnDownBlock2D", "DownBlock2D"]}
        )
