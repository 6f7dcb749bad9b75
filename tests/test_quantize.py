"""Int8 linears for CPU inference (nets/quantize.py): every linear swapped, the output close to fp32's."""

from __future__ import annotations

import copy

import torch
from torch import nn

from noisecraft.conditioning import Conditioning
from noisecraft.nets.quantize import quantize_int8, relative_error
from noisecraft.nets.unet import UNet, UNetConfig


def test_int8_swaps_every_linear_and_stays_within_a_few_percent_of_fp32():
    torch.manual_seed(0)
    config = UNetConfig(image_size=8, in_channels=4, channels=16, channel_mult=(1, 2), head_dim=8,
                        attention_resolutions=(8, 4), text_dim=12, feed_forward="geglu")  # fmt: skip
    net = UNet(config).eval()
    for p in net.parameters():  # a fresh U-Net outputs zeros (zero-initialised output layers)
        nn.init.normal_(p, std=0.2)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    cond = Conditioning(torch.randn(2, 5, 12, generator=generator), torch.ones(2, 5, dtype=torch.bool),
                        torch.zeros(2, 12))  # fmt: skip
    int8 = quantize_int8(copy.deepcopy(net))
    assert not any(isinstance(m, nn.Linear) for m in int8.modules())
    assert sum(1 for m in int8.modules() if type(m).__name__ == "Linear") == sum(
        1 for m in net.modules() if isinstance(m, nn.Linear)
    )
    with torch.no_grad():
        reference, quantized = net(x, 3.0, cond), int8(x, 3.0, cond)
    assert 0 < relative_error(reference, quantized) < 0.05


def test_an_int8_pipeline_has_a_weights_hash_of_its_own():
    """The hash PNGs record covers int8 linears (their integer weights and scales), not only fp32 tensors."""
    from conftest import make_tiny_pipeline

    plain, int8 = make_tiny_pipeline(), make_tiny_pipeline()
    quantize_int8(int8.net)
    assert int8.weights_hash != plain.weights_hash
    again = make_tiny_pipeline()
    quantize_int8(again.net)
    assert again.weights_hash == int8.weights_hash  # a function of the weights
    (image,) = int8.generate("a red circle", steps=2)
    assert image.info["noisecraft"]["weights"] == int8.weights_hash
