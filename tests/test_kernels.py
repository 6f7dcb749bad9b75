"""CPU kernel choices (nets/kernels.py): the ISA table, its overrides, and that the layers obey them."""

from __future__ import annotations

import json

import pytest
import torch
from torch.profiler import profile

from noisecraft.cli import main
from noisecraft.nets import kernels
from noisecraft.nets.kernels import CpuKernels, cpu_kernels, parse_kernels, set_cpu_kernels
from noisecraft.nets.layers import TokenLinear
from noisecraft.nets.unet import UNet, UNetConfig

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch")


@pytest.fixture(autouse=True)
def table_choice(monkeypatch):
    """Each test starts from the table, without NOISECRAFT_KERNELS, and leaves it so."""
    monkeypatch.delenv(kernels.ENV, raising=False)
    set_cpu_kernels(None)
    yield
    set_cpu_kernels(None)


def test_parse_applies_each_choice_and_layout_sets_both_sizes():
    base = CpuKernels("nhwc", "nchw", "onednn")
    assert parse_kernels("auto", base, "x") is base
    got = parse_kernels("layout=nchw, linear=mkl", base, "x")
    assert (got.layout, got.large_layout, got.linear, got.source) == ("nchw", "nchw", "mkl", "x")
    got = parse_kernels("large_layout=nhwc", base, "x")
    assert (got.layout, got.large_layout, got.linear) == ("nhwc", "nhwc", "onednn")


@pytest.mark.parametrize("spec", ["layout=nwhc", "linear", "speed=fast", "linear=mkl,,"])
def test_bad_choice_names_the_valid_ones(spec):
    with pytest.raises(ValueError, match="valid: auto or layout=nhwc|nchw"):
        parse_kernels(spec, CpuKernels(), "--kernels")


def test_environment_variable_overrides_the_table_and_set_overrides_both(monkeypatch):
    table, row = cpu_kernels(), kernels.TABLE.get(kernels.isa(), kernels.TABLE["AVX2"])
    assert table.source == f"table ({kernels.isa()})" and table.spec() == row.spec()
    monkeypatch.setenv(kernels.ENV, "linear=mkl")
    assert set_cpu_kernels(None).linear == "mkl" and cpu_kernels().source == kernels.ENV
    chosen = set_cpu_kernels("linear=onednn,layout=nchw")
    assert (chosen.linear, chosen.layout, chosen.source) == ("onednn", "nchw", "--kernels")


def convolutions(module, *args) -> int:
    """How many oneDNN convolutions one forward of ``module`` ran."""
    with torch.no_grad(), profile() as prof:
        module(*args)
    return sum(e.count for e in prof.key_averages() if e.key == "aten::mkldnn_convolution")


@needs_onednn
def test_token_linear_follows_the_linear_choice_with_the_same_result():
    torch.manual_seed(0)
    layer, x = TokenLinear(32, 48), torch.randn(2, 64, 32)
    set_cpu_kernels("linear=onednn")
    assert convolutions(layer, x) == 1
    onednn = layer(x)
    set_cpu_kernels("linear=mkl")
    assert convolutions(layer, x) == 0
    torch.testing.assert_close(layer(x), onednn, rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize(
    "channels, field, other", [(8, "layout", "large_layout"), (256, "large_layout", "layout")]
)
def test_unet_layout_follows_the_choice_for_its_size(channels, field, other):
    """A small net reads ``layout``, a large one ``large_layout``; the other field is set the opposite way."""
    config = UNetConfig(image_size=8, channels=channels, channel_mult=(1,), attention_resolutions=(),
                        head_dim=8, mid_attention=False)  # fmt: skip
    net, seen = UNet(config).eval(), []
    net.conv_out.register_forward_pre_hook(
        lambda _, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    for mine, theirs in (("nhwc", "nchw"), ("nchw", "nhwc")):
        set_cpu_kernels(f"{other}={theirs},{field}={mine}")
        with torch.no_grad():
            net(torch.randn(1, 3, 8, 8), 0.0)
    assert channels >= kernels.LARGE_WIDTH if field == "large_layout" else channels < kernels.LARGE_WIDTH
    assert seen == [True, False]


def test_info_and_version_report_the_choice(capsys):
    assert main(["--kernels", "linear=mkl", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["isa"] == kernels.isa() and "linear=mkl (--kernels)" in info["cpu kernels"]
    assert info["devices"].startswith("cpu") and info["torch"].startswith(torch.__version__)
    with pytest.raises(SystemExit):
        main(["--version"])
    line = capsys.readouterr().out
    assert torch.__version__ in line and kernels.isa() in line and "linear=" in line


def test_a_bad_kernels_flag_is_one_line_and_exit_2(capsys):
    assert main(["--kernels", "linear=fast", "info"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "linear=fast" in err
