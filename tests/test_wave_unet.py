"""The 1-D U-Net over waveforms and the tones waveform items it trains on (configs/tones_wave.toml)."""

from __future__ import annotations

import json

import pytest
import torch

from noisecraft.audio import CLIP_SAMPLES
from noisecraft.cli import main
from noisecraft.components import load_component, save_component
from noisecraft.conditioning import Conditioning
from noisecraft.data.tones import WAVE_SAMPLES, TonesDataset
from noisecraft.evaluation.sound import waveform_scores
from noisecraft.nets import WaveUNet, WaveUNetConfig
from noisecraft.training.config import load_config

TEXT_DIM = 12
TINY = dict(channels=8, channel_mult=(1, 2, 4), factor=4, kernel=3, attention_levels=(1, 2), head_dim=8)


def perturbed(net: WaveUNet, seed: int = 1) -> WaveUNet:
    """The net with every all-zero parameter (zero-inits, biases) filled with small noise, so every path
    contributes (a fresh net outputs 0 and passes no gradient upstream of its output layers)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    return net.eval()


def cond(batch: int, generator: torch.Generator, tokens: int = 5) -> Conditioning:
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    return Conditioning(torch.randn(batch, tokens, TEXT_DIM, generator=generator), mask,
                        torch.randn(batch, TEXT_DIM, generator=generator))  # fmt: skip


def test_fresh_net_outputs_zero_and_keeps_the_shape():
    torch.manual_seed(0)
    net = WaveUNet(WaveUNetConfig(text_dim=TEXT_DIM, **TINY))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 64, generator=g)
    assert torch.equal(net(x, torch.zeros(2), cond(2, g)), torch.zeros_like(x))
    net = perturbed(net)
    for length in (16, 48, 128):
        x = torch.randn(2, 1, length, generator=g)
        out = net(x, torch.zeros(2), cond(2, g))
        assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().max() > 0


def test_the_prompt_and_the_noise_level_steer_it_and_rows_are_independent():
    torch.manual_seed(0)
    net = perturbed(WaveUNet(WaveUNetConfig(text_dim=TEXT_DIM, **TINY)))
    g = torch.Generator().manual_seed(2)
    x, c = torch.randn(3, 1, 64, generator=g), cond(3, g)
    out = net(x, torch.full((3,), 0.5), c)
    assert (net(x, torch.full((3,), -0.5), c) - out).abs().max() > 1e-3
    assert (net(x, torch.full((3,), 0.5), cond(3, g)) - out).abs().max() > 1e-3
    for i in range(3):
        alone = net(x[i : i + 1], torch.full((1,), 0.5), c[i : i + 1])
        torch.testing.assert_close(out[i : i + 1], alone, rtol=0, atol=1e-5)


def test_gradient_reaches_every_parameter_and_a_save_load_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    net = perturbed(WaveUNet(WaveUNetConfig(text_dim=TEXT_DIM, **TINY))).train()
    g = torch.Generator().manual_seed(3)
    x, c = torch.randn(2, 1, 64, generator=g), cond(2, g)
    net(x, torch.zeros(2), c).square().mean().backward()
    dead = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert not dead, f"parameters without gradient: {dead}"
    save_component(net.eval(), tmp_path / "net")
    back = load_component(tmp_path / "net")
    assert isinstance(back, WaveUNet) and back.config == net.config
    assert torch.equal(back(x, torch.zeros(2), c), net(x, torch.zeros(2), c))


def test_bad_inputs_and_configs_give_one_clear_error():
    net = WaveUNet(WaveUNetConfig(text_dim=TEXT_DIM, **TINY))
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="multiple of 16"):
        net(torch.zeros(1, 1, 40), torch.zeros(1), cond(1, g))
    with pytest.raises(ValueError, match=r"\[B, 1, N\]"):
        net(torch.zeros(1, 1, 4, 16), torch.zeros(1), cond(1, g))
    with pytest.raises(ValueError, match="unconditional"):
        WaveUNet(WaveUNetConfig(**TINY))(torch.zeros(1, 1, 16), torch.zeros(1), cond(1, g))
    bad_configs = (({"kernel": 4}, "odd kernel"), ({"factor": 1}, "factor"),
                   ({"attention_levels": (3,)}, "attention_levels"), ({"head_dim": 12}, "multiples of 12"),
                   ({"channel_mult": (1, 0, 2)}, "≥ 1"))  # fmt: skip
    for bad, match in bad_configs:
        with pytest.raises(ValueError, match=match):
            WaveUNetConfig(**{**TINY, **bad})


def test_tones_waveform_items_are_the_clips_sound_zero_padded():
    wave = TonesDataset(length=8, seed=5, representation="waveform")
    image = TonesDataset(length=8, seed=5)
    sound, caption = wave[3]
    assert sound.shape == (1, WAVE_SAMPLES) and caption == image[3][1]
    assert torch.equal(sound[0, :CLIP_SAMPLES], image.waveform(3)) and not sound[0, CLIP_SAMPLES:].any()
    assert wave.cache_params() != image.cache_params()
    with pytest.raises(ValueError, match="representation"):
        TonesDataset(representation="mp3")


def test_waveform_scores_reads_real_sounds_right_and_silence_wrong():
    ds = TonesDataset(length=12, seed=7)
    captions = [ds.clip_and_caption(i)[1] for i in range(12)]
    real = waveform_scores([ds.waveform(i) for i in range(12)], captions)
    assert real["accuracy"] == 1.0 and set(real["facts"]) >= {"parts", "loudness", "kind"}
    assert waveform_scores([torch.zeros(CLIP_SAMPLES)] * 12, captions)["accuracy"] == 0.0


def test_the_waveform_recipe_trains_and_exports_a_loadable_net(tmp_path):
    recipe = load_config("configs/tones_wave.toml")
    assert recipe.model.kind == "wave_unet" and recipe.data.options["representation"] == "waveform"
    tiny = [
        "steps=2", "data.options.length=8", "data.cache=off", "optim.batch_size=2", "model.net.channels=4",
        "model.net.channel_mult=[1,2,8,8,8]", "model.net.attention_levels=[4]",
    ]  # fmt: skip
    out = tmp_path / "run"
    assert main(["train", "configs/tones_wave.toml", "--out", str(out), "--set", *tiny]) == 0
    net = load_component(out / "model" / "net")
    record = json.loads((out / "model" / "training.json").read_text())
    assert isinstance(net, WaveUNet) and record["step"] == 2 and record["sigma_data"] == 0.15
    assert not (out / "model" / "pipeline.json").exists()  # generate draws spectrogram models only
    x = TonesDataset(length=1, representation="waveform")[0][0][None]  # [1, 1, WAVE_SAMPLES]
    assert net(x, torch.zeros(1)).shape == x.shape
