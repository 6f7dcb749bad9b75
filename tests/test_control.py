"""Control branches (ControlNet): zero at start, scale 0 is the base model bit for bit, several controls
sum, the σ window follows the steps, and the maps a user can make (Canny on known edges)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from noisecraft.conditioning import Conditioning, ControlHint
from noisecraft.control_maps import ControlMapError, canny, make_map, read_map, scribble
from noisecraft.data.shapes import KIND_COLOURS, Scene, Shape, layout_map
from noisecraft.guidance import Control, ControlWindow, sigma_window
from noisecraft.model import ControlSpec
from noisecraft.nets.control import ControlNet
from noisecraft.nets.unet import UNet, UNetConfig

TINY = UNetConfig(image_size=8, channels=8, channel_mult=(1, 2), blocks_per_level=1,
                  attention_resolutions=(4,), head_dim=8, text_dim=16)  # fmt: skip


def _cond(b: int) -> Conditioning:
    g = torch.Generator().manual_seed(0)
    return Conditioning(torch.randn(b, 5, 16, generator=g), torch.ones(b, 5, dtype=torch.bool),
                        torch.randn(b, 16, generator=g))  # fmt: skip


def _randomise(branch: ControlNet, seed: int) -> ControlNet:
    g = torch.Generator().manual_seed(seed)
    for p in branch.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.1
    return branch


@pytest.fixture(scope="module")
def unet() -> UNet:
    torch.manual_seed(0)
    net = UNet(TINY).eval()
    for p in net.parameters():  # every zero-initialised layer too, so the decoder reads its skips
        p.data = torch.randn_like(p) * 0.1
    return net


def test_fresh_branch_copies_the_encoder_and_adds_exactly_zero(unet):
    branch = ControlNet.from_unet(unet, hint_widths=(4, 8), hint_stride=1)
    assert torch.equal(branch.down[0].res.conv1.weight, unet.down[0].res.conv1.weight)
    x, c, cond = torch.randn(2, 3, 8, 8), torch.tensor([0.3, -1.0]), _cond(2)
    skips, mid = branch(x, c, cond, torch.rand(1, 3, 8, 8))
    assert len(skips) == 4 and all(not s.any() for s in skips) and not mid.any()
    with torch.no_grad():
        base = unet(x, c, cond)
        hinted = unet(x, c, cond.with_control((ControlHint(branch, torch.rand(1, 3, 8, 8)),)))
    assert torch.equal(base, hinted)


def test_several_controls_sum_their_scaled_residuals(unet):
    a = _randomise(ControlNet.from_unet(unet, hint_widths=(4,), hint_stride=1), 1)
    b = _randomise(ControlNet.from_unet(unet, hint_widths=(4,), hint_stride=1), 2)
    x, c, cond = torch.randn(2, 3, 8, 8), torch.zeros(2), _cond(2)
    ha, hb = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        (sa, ma), (sb, mb) = a(x, c, cond, ha), b(x, c, cond, hb)
        want = unet(x, c, cond, residuals=([0.5 * p - 2 * q for p, q in zip(sa, sb)], 0.5 * ma - 2 * mb))
        got = unet(x, c, cond.with_control((ControlHint(a, ha, 0.5), ControlHint(b, hb, -2.0))))
        base = unet(x, c, cond)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert (got - base).abs().max() > 1e-3


def test_sigma_window_follows_the_fraction_of_steps():
    sigmas = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0.0])  # 5 steps
    assert sigma_window((0.0, 1.0), sigmas) == (0.5, 10.0)
    assert sigma_window((0.2, 0.6), sigmas) == (1.0, 5.0)  # steps 1…3 (i/5 in [0.2, 0.6])
    calls = []

    def denoiser(x, sigma, cond):
        calls.append([h.scale for h in cond.control])
        return x

    window = ControlWindow(
        denoiser, [Control(torch.nn.Identity(), torch.zeros(1, 3, 2, 2), 0.7, (0.2, 0.6))], sigmas
    )
    for s in sigmas[:-1]:
        window(torch.zeros(1, 3, 2, 2), s, _cond(1))
    assert calls == [[], [0.7], [0.7], [0.7], []]
    zero = ControlWindow(denoiser, [Control(torch.nn.Identity(), torch.zeros(1, 3, 2, 2), 0.0)], sigmas)
    zero(torch.zeros(1, 3, 2, 2), 5.0, _cond(1))
    assert calls[-1] == []  # a control at scale 0 is never attached: nothing of it runs
    with pytest.raises(ValueError):
        Control(torch.nn.Identity(), torch.zeros(1, 3, 2, 2), 1.0, (0.8, 0.2))


def test_canny_finds_a_squares_edges_and_nothing_else():
    image = np.zeros((40, 40))
    image[10:30, 12:28] = 1.0  # rows 10…29, columns 12…27
    edges = canny(image, low=0.1, high=0.3, sigma=1.0)
    ys, xs = np.nonzero(edges)
    near_boundary = (np.minimum(np.abs(ys - 9.5), np.abs(ys - 29.5)) <= 1) & (xs >= 11) & (xs <= 28)
    near_boundary |= (np.minimum(np.abs(xs - 11.5), np.abs(xs - 27.5)) <= 1) & (ys >= 9) & (ys <= 30)
    assert near_boundary.all()  # every edge pixel within a pixel of the square's outline
    for row in range(13, 27):  # each side found along its length, one pixel thick (non-max suppression)
        assert edges[row, 10:14].sum() == 1 and edges[row, 26:30].sum() == 1
    assert not edges[14:26, 16:24].any() and not edges[:5].any()
    assert not canny(np.full((20, 20), 0.5)).any()


def test_scribble_keeps_dark_strokes():
    page = np.ones((16, 16))
    page[8, 2:14] = 0.1
    assert np.array_equal(np.nonzero(scribble(page))[0], np.full(12, 8))


def test_maps_are_resized_and_bad_maps_refused():
    layout = Image.new("RGB", (64, 64), (0, 0, 0))
    layout.paste((255, 0, 0), (0, 0, 32, 64))
    m = make_map(read_map(layout), "layout", (32, 32))
    assert m.shape == (3, 32, 32) and m[0, :, :16].eq(1).all() and m[0, :, 16:].eq(0).all()
    with pytest.raises(ControlMapError, match="not a readable image"):
        read_map(b"not an image")
    alpha_only = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    alpha_only.putpixel((3, 3), (0, 0, 0, 255))
    buffer = io.BytesIO()
    alpha_only.save(buffer, "PNG")
    with pytest.raises(ControlMapError, match="only an alpha channel"):
        read_map(buffer.getvalue())
    with pytest.raises(ValueError):
        ControlSpec(layout, kind="depth")


def test_layout_map_colours_each_shape_by_kind():
    square = Shape("red", "square", "large", 0.3, 0.5, 0.2)
    scene = Scene((square, Shape("blue", "circle", "small", 0.75, 0.5, 0.12)), "white")
    m = layout_map(scene, 32)
    assert m[:, 16, 9].tolist() == [c / 255 for c in KIND_COLOURS["square"]]
    assert m[:, 16, 24].tolist() == [c / 255 for c in KIND_COLOURS["circle"]]
    assert m[:, 2, 2].tolist() == [0.0, 0.0, 0.0]
