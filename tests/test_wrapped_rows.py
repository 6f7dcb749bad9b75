"""A U-Net whose convolutions wrap rows around (``row_padding="circular"``, for a spectrogram's
frequency axis): moving the input up by a multiple of its down-sampling factor moves the output by
as much, exactly; the same weights zero-padded do not; columns (time) stay zero-padded."""

from __future__ import annotations

import pytest
import torch

from noisecraft.conditioning import Conditioning
from noisecraft.nets import UNet, UNetConfig
from noisecraft.nets.layers import PaddedConv2d


def tiny_net(row_padding: str, positions: bool = False, queries: bool = False) -> UNet:
    """Widths 8/16/16 (down-sampling 4), attention at 8 and 4 and in the middle, every weight random."""
    torch.manual_seed(0)
    config = UNetConfig(
        image_size=16, in_channels=1, channels=8, channel_mult=(1, 2, 2), blocks_per_level=1,
        attention_resolutions=(8, 4), head_dim=8, text_dim=6, row_padding=row_padding,
        attention_positions=positions, query_positions=queries,
    )  # fmt: skip
    net = UNet(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():  # zero-initialised layers too: every path contributes
            p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    return net.eval()


def prompt_and_input(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
    g = torch.Generator().manual_seed(2)
    tokens = torch.randn(batch, 4, 6, generator=g)
    cond = Conditioning(tokens=tokens, mask=torch.ones(batch, 4, dtype=torch.bool), pooled=tokens.mean(1))
    return torch.randn(batch, 1, 16, 16, generator=g), torch.randn(batch, generator=g), cond


def largest_change(net: UNet, shifts: int, dim: int, prompt: bool = True) -> float:
    """max |net(roll(x)) − roll(net(x))| for a roll of ``shifts`` along ``dim`` (2: rows, 3: columns)."""
    x, c_noise, cond = prompt_and_input()
    cond = cond if prompt else None
    with torch.no_grad():
        moved_after = net(x, c_noise, cond).roll(shifts, dim)
        moved_before = net(x.roll(shifts, dim), c_noise, cond)
    return (moved_after - moved_before).abs().max().item()


def test_wrapped_rows_make_the_net_equivariant_to_moving_every_row():
    wrapped = tiny_net("circular")
    zero_padded = tiny_net("zeros")
    zero_padded.load_state_dict(wrapped.state_dict())  # the same tensors under the same names
    for shift in (4, -8, 12):  # multiples of the down-sampling factor
        assert largest_change(wrapped, shift, dim=2) < 1e-5
        assert largest_change(zero_padded, shift, dim=2) > 1e-2
    assert largest_change(wrapped, 2, dim=2) > 1e-2  # within a stride-2 cell it is not exact
    assert largest_change(wrapped, 4, dim=3) > 1e-2  # columns are zero-padded: time keeps its ends


def test_attention_positions_tell_rows_apart_again():
    assert largest_change(tiny_net("circular", positions=True), 4, dim=2) > 1e-2
    assert largest_change(tiny_net("circular", positions=True), 4, dim=2, prompt=False) > 1e-2


def test_query_positions_act_only_through_what_the_prompt_puts_where():
    """Positions on the cross-attention's queries alone: without a prompt the net cannot tell one row
    from another; with one, where the words land depends on the row."""
    net = tiny_net("circular", positions=True, queries=True)
    assert largest_change(net, 4, dim=2, prompt=False) < 1e-5
    assert largest_change(net, 4, dim=2) > 1e-3
    with pytest.raises(ValueError, match="query_positions needs attention_positions"):
        UNetConfig(text_dim=6, head_dim=8, query_positions=True)


def test_a_wrapped_convolution_is_a_convolution_of_the_wrapped_image():
    torch.manual_seed(0)
    conv = PaddedConv2d(3, 5, 3, stride=2, row_padding="circular")
    x = torch.randn(2, 3, 10, 12)
    tiled = torch.cat([x[:, :, -1:], x, x[:, :, :1]], dim=2)  # the last row above, the first below
    want = torch.nn.functional.conv2d(tiled, conv.weight, conv.bias, stride=2, padding=(0, 1))
    assert torch.allclose(conv(x), want, atol=1e-6) and conv(x).shape == (2, 5, 5, 6)
    plain = PaddedConv2d(3, 5, 3, stride=2)
    plain.load_state_dict(conv.state_dict())
    assert torch.equal(plain(x), torch.nn.functional.conv2d(x, conv.weight, conv.bias, stride=2, padding=1))


def test_an_unknown_row_padding_is_refused():
    with pytest.raises(ValueError, match="row_padding must be one of"):
        UNetConfig(row_padding="reflect")
    with pytest.raises(ValueError, match="row_padding must be one of"):
        PaddedConv2d(2, 2, row_padding="wrap")
