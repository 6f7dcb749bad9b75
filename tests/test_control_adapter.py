"""The T2I-Adapter-style control (nets/control_adapter.py): zero when fresh, its pyramid run once per
generation, its residuals shaped like the U-Net's skips, saved and loaded as a control model, trained by
train-control, and refused with one line for a map of the wrong size or another network."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_pipeline
from PIL import Image

from noisecraft.components import save_component
from noisecraft.conditioning import Conditioning, ControlHint
from noisecraft.model import ControlSpec
from noisecraft.model.control import load_control_branch
from noisecraft.nets.control_adapter import ControlAdapter, skip_levels
from noisecraft.nets.unet import UNet, UNetConfig
from noisecraft.pipeline import Pipeline
from noisecraft.training.control import ControlTrainConfig, train_control


def _randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.1
    return module.eval()


def _cond(b: int) -> Conditioning:
    g = torch.Generator().manual_seed(0)
    return Conditioning(torch.randn(b, 5, 16, generator=g), torch.ones(b, 5, dtype=torch.bool),
                        torch.randn(b, 16, generator=g))  # fmt: skip


@pytest.fixture(scope="module")
def unet() -> UNet:
    config = UNetConfig(image_size=8, channels=8, channel_mult=(1, 2), blocks_per_level=2,
                        attention_resolutions=(4,), head_dim=8, text_dim=16)  # fmt: skip
    return _randomised(UNet(config), 1)


def test_residuals_match_the_skips_and_a_fresh_adapter_adds_zero(unet):
    adapter = ControlAdapter.from_unet(unet, adapter_width=4)
    x, c, cond = torch.randn(3, 3, 8, 8), torch.zeros(3), _cond(3)
    with torch.no_grad():
        _, skips = unet.encode(unet.conv_in(x), *unet.prepare(x, c, cond)[1:])
        residuals, mid = adapter(x, c, cond, torch.rand(1, 3, 8, 8))
        assert [r.shape for r in residuals] == [s.shape for s in skips]
        assert [r.shape[1] for r in residuals] == [w for w, _ in skip_levels(unet.config)]
        assert mid.shape == (3, 16, 4, 4) and not mid.any() and not any(r.any() for r in residuals)
        hinted = unet(x, c, cond.with_control((ControlHint(adapter, torch.rand(1, 3, 8, 8)),)))
        assert torch.equal(hinted, unet(x, c, cond))


def test_the_pyramid_runs_once_per_map_at_inference_and_steers_the_output(unet):
    adapter = _randomised(ControlAdapter.from_unet(unet, adapter_width=4), 2)
    runs = [0]
    adapter.stages[0].register_forward_hook(lambda *_: runs.__setitem__(0, runs[0] + 1))
    x, cond, hint = torch.randn(2, 3, 8, 8), _cond(2), torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        outs = [
            unet(x, torch.full((2,), s), cond.with_control((ControlHint(adapter, hint),))) for s in (1.0, 0.0)
        ]
        assert runs[0] == 1  # two steps, one pyramid
        other = unet(x, torch.ones(2), cond.with_control((ControlHint(adapter, torch.rand(1, 3, 8, 8)),)))
        assert runs[0] == 2 and not torch.allclose(other, outs[0])
        assert not torch.allclose(outs[0], unet(x, torch.ones(2), cond))
    with pytest.raises(
        ValueError, match=r"the map must be \[B, 3, 8, 8\] for this input, got \[1, 3, 16, 16\]"
    ):
        adapter(x, torch.ones(2), cond, torch.rand(1, 3, 16, 16))


def test_a_saved_adapter_is_a_control_model_and_refused_for_another_net(tmp_path):
    pipe = make_tiny_pipeline()
    adapter = _randomised(ControlAdapter.from_unet(pipe.net, adapter_width=4), 3)
    save_component(adapter, tmp_path / "adapter")
    loaded = load_control_branch(tmp_path / "adapter", pipe.net)
    assert isinstance(loaded, ControlAdapter)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), adapter.state_dict().values()))
    spec = ControlSpec(Image.new("RGB", (8, 8), (200, 30, 30)), "layout", str(tmp_path / "adapter"))
    plain = pipe.sample(["a red circle"], steps=3, seed=1)
    steered = pipe.sample(["a red circle"], steps=3, seed=1, controls=(spec,))
    zero = pipe.sample(
        ["a red circle"], steps=3, seed=1, controls=(ControlSpec(spec.image, "layout", spec.model, 0.0),)
    )
    assert torch.equal(zero, plain) and not torch.equal(steered, plain)
    other = UNet(
        UNetConfig(
            image_size=8,
            channels=16,
            channel_mult=(1, 2),
            blocks_per_level=1,
            attention_resolutions=(),
            text_dim=16,
        )
    )
    with pytest.raises(ValueError, match="is for another network"):
        load_control_branch(tmp_path / "adapter", other)


@pytest.mark.parametrize("kind", ["adapter", "controlnet"])
def test_train_control_trains_either_kind_and_resumes(tmp_path, kind):
    config = ControlTrainConfig(kind=kind, steps=2, batch_size=2, threads=1, checkpoint_every=1, log_every=1,
                                length=16, adapter_width=8)  # fmt: skip
    exported = train_control(config, tmp_path / "run")
    branch = load_control_branch(exported, Pipeline.load("shapes").net)
    assert type(branch).__name__ == {"adapter": "ControlAdapter", "controlnet": "ControlNet"}[kind]
    assert any(p.any() for name, p in branch.named_parameters() if "zero_convs" in name)  # it learned
    config.steps = 3
    train_control(config, tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "log.jsonl").read_text().count('"step"') == 3


def test_a_bad_kind_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="kind must be 'controlnet' or 'adapter', got 'lora'"):
        train_control(ControlTrainConfig(kind="lora", steps=1, batch_size=1, threads=1, length=4), tmp_path)
