"""Shared fixtures: the exact 2-D mixture oracle and a toy ε-network for peer comparisons."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from noisecraft.denoisers import GaussianMixtureDenoiser

# One thread per test process: tiny tensors run fastest single-threaded, and `make test` runs
# two test processes side by side (pytest-xdist) to use both cores.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``cuda`` skip where torch sees no CUDA GPU (CI); on a GPU machine they run."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def make_mixture2d() -> GaussianMixtureDenoiser:
    """Three well-separated, unequally weighted, correlated 2-D Gaussians (data scale ≈ 1)."""
    means = torch.tensor([[-1.5, -0.5], [1.2, -0.8], [0.0, 1.4]])
    covs = torch.tensor(
        [
            [[0.10, 0.04], [0.04, 0.06]],
            [[0.05, -0.02], [-0.02, 0.12]],
            [[0.15, 0.00], [0.00, 0.03]],
        ]
    )
    return GaussianMixtureDenoiser(means, covs, torch.tensor([0.5, 0.3, 0.2]))


@pytest.fixture
def mixture2d() -> GaussianMixtureDenoiser:
    return make_mixture2d()


class ToyEpsNet(torch.nn.Module):
    """A fixed, smooth ε-prediction 'network' eps(x_vp, t): nonlinear in x and in t, no training."""

    def __init__(self, channels: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.mix = torch.nn.Parameter(torch.randn(channels, channels, generator=g) / channels**0.5)
        self.bias = torch.nn.Parameter(torch.randn(channels, generator=g))

    def forward(self, x_in: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x_in.dtype).reshape(-1, *([1] * (x_in.ndim - 1)))
        mixed = torch.einsum("ij,bj...->bi...", self.mix, x_in)
        phase = self.bias.reshape(1, -1, *([1] * (x_in.ndim - 2)))
        return torch.tanh(mixed + 0.5 * torch.sin(t / 150.0 + phase)) * 0.8 + 0.2 * x_in


@pytest.fixture
def toy_eps_net() -> ToyEpsNet:
    return ToyEpsNet()


def make_tiny_pipeline():
    """An untrained 8×8 text-to-image Pipeline whose output depends on prompt, seed and settings."""
    from noisecraft.nets import UNet, UNetConfig
    from noisecraft.pipeline import Pipeline, PipelineConfig
    from noisecraft.text.builtin import BuiltinTextEncoder, BuiltinTextEncoderConfig

    torch.manual_seed(0)
    encoder = BuiltinTextEncoder(BuiltinTextEncoderConfig(dim=16, depth=1, heads=2, max_length=32))
    net = UNet(
        UNetConfig(
            image_size=8, channels=8, channel_mult=(1, 2), blocks_per_level=1,
            attention_resolutions=(4,), head_dim=8, text_dim=16, mid_attention=False,
        )
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # fill the zero-initialised layers so everything matters
        for p in net.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    config = PipelineConfig(name="tiny", image_size=8, steps=4, sampler="euler", guidance=2.0, sigma_max=10.0)
    return Pipeline(net, encoder, config)


def make_tiny_sound_pipeline():
    """An untrained text-to-sound Pipeline: 16×16 spectrograms (16 mel bands × 16 frames of 64 samples
    at 8 kHz: 0.128 s), 8 Griffin-Lim iterations; not the tones data's format, so a test sees it used."""
    from noisecraft.audio import SpectrogramFormat
    from noisecraft.pipeline import Pipeline, PipelineConfig

    image = make_tiny_pipeline()
    torch.manual_seed(0)
    shape = {"image_size": 16, "in_channels": 1, "attention_resolutions": (8,)}
    net = type(image.net)(dataclasses.replace(image.net.config, **shape))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    audio = SpectrogramFormat(sample_rate=8000, n_fft=128, hop=64, n_mels=16, f_min=20.0, griffin_lim_iters=8)
    config = PipelineConfig(name="tiny-sound", image_size=16, channels=1, steps=4, sampler="euler",
                            guidance=2.0, sigma_max=10.0, audio=audio)  # fmt: skip
    return Pipeline(net, image.text_encoder, config)


@pytest.fixture(scope="session")
def tiny_sound_dir(tmp_path_factory):
    """A tiny sound model saved to a folder."""
    return make_tiny_sound_pipeline().save(tmp_path_factory.mktemp("models") / "tiny-sound")


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A tiny pipeline saved to a folder, as ``Pipeline.load`` and ``--model`` accept."""
    return make_tiny_pipeline().save(tmp_path_factory.mktemp("models") / "tiny")


def save_tiny_control_model(folder):
    """The tiny pipeline saved to ``folder`` with a ``control/`` of its own whose zero convolutions are
    random (so the control changes the image); the folder."""
    from noisecraft.components import save_component
    from noisecraft.nets.control import ControlNet

    pipe = make_tiny_pipeline()
    folder = pipe.save(folder)
    branch = ControlNet.from_unet(pipe.net, hint_widths=(4,), hint_stride=1)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in branch.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    save_component(branch, folder / "control")
    return folder


class ODEMap(torch.nn.Module):
    """The consistency function of a denoiser's probability-flow ODE, f(x, σ) = x(σ_min) on the path
    through (x, σ), solved with ``steps`` Heun steps on a Karras grid (Song et al. 2023's f*)."""

    def __init__(self, denoiser, steps: int = 40, sigma_min: float = 0.002):
        super().__init__()
        self.denoiser, self.steps, self.sigma_min = denoiser, steps, sigma_min

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        from noisecraft.schedules import karras
        from noisecraft.training.distill import teacher_step

        s = float(sigma.reshape(-1)[0])
        assert (sigma == s).all(), "one σ for the whole batch"
        if s <= self.sigma_min:
            return x
        grid = karras(self.steps, self.sigma_min, s, dtype=torch.float64)[:-1]  # s … σ_min
        for hi, lo in zip(grid[:-1], grid[1:]):
            x = teacher_step(self.denoiser, x, hi.expand(len(x)), lo.expand(len(x)), "heun")
        return x
