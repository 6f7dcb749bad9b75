"""DeepCache (nets/feature_cache.py): the shallow path on a full run's own deep features is that run,
the deep blocks run only every N-th call, interval 1 is the plain network, and bad intervals are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline

from noisecraft.conditioning import Conditioning, ControlHint
from noisecraft.model import SamplingOptions
from noisecraft.model.options import OptionError
from noisecraft.nets.control import ControlNet
from noisecraft.nets.feature_cache import FeatureCache, reuse_features
from noisecraft.nets.unet import UNet, UNetConfig

TINY = UNetConfig(image_size=8, channels=8, channel_mult=(1, 2), blocks_per_level=1,
                  attention_resolutions=(4,), head_dim=8, text_dim=16)  # fmt: skip


def _randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():  # zero-initialised layers too, so every block matters
        p.data = torch.randn(p.shape, generator=g) * 0.1
    return module.eval()


def _inputs(b: int = 2) -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
    g = torch.Generator().manual_seed(0)
    cond = Conditioning(torch.randn(b, 5, 16, generator=g), torch.ones(b, 5, dtype=torch.bool),
                        torch.randn(b, 16, generator=g))  # fmt: skip
    return torch.randn(b, 3, 8, 8, generator=g), torch.tensor([0.3, -1.0])[:b], cond


def _counting(module: torch.nn.Module) -> list[int]:
    runs = [0]
    module.register_forward_hook(lambda *_: runs.__setitem__(0, runs[0] + 1))
    return runs


@pytest.mark.parametrize("branch", [1, 2, 3, 4])
def test_shallow_path_on_its_own_deep_features_is_the_full_run(branch):
    net = _randomised(UNet(TINY), 1)
    mid_runs, first_runs = _counting(net.mid[0]), _counting(net.down[0])
    x, c, cond = _inputs()
    cache = FeatureCache(interval=2, branch=branch)
    net.feature_cache = cache
    with torch.no_grad():
        cache.next_call()
        full = net(x, c, cond)
        cache.next_call()
        shallow = net(x, c, cond)  # the same input: the kept features are exactly what it would compute
        changed = net(x.flip(0), c, cond)  # slot 1 has nothing kept: a full run
    net.feature_cache = None
    assert mid_runs[0] == 2 and (cache.full_runs, cache.shallow_runs) == (2, 1)
    assert first_runs[0] == 2 + (branch > 1)  # the shallow path runs down[0] only from branch 2 on
    torch.testing.assert_close(shallow, full, rtol=0, atol=1e-6)
    assert not torch.allclose(changed, full)


def test_shallow_path_uses_fresh_inputs_and_control_residuals_on_its_skips():
    net = _randomised(UNet(TINY), 1)
    branch = _randomised(ControlNet.from_unet(net, hint_widths=(4,), hint_stride=1), 2)
    x, c, cond = _inputs()
    cond = cond.with_control((ControlHint(branch, torch.rand(1, 3, 8, 8)),))
    cache = FeatureCache(interval=3, branch=2)
    net.feature_cache = cache
    with torch.no_grad():
        cache.next_call()
        full = net(x, c, cond)
        cache.next_call()
        shallow = net(x, c, cond)
        cache.next_call()
        moved = net(x + 0.5, c, cond)
    net.feature_cache = None
    torch.testing.assert_close(shallow, full, rtol=0, atol=1e-6)
    with torch.no_grad():
        plain = net(x + 0.5, c, cond)
    assert not torch.allclose(moved, full) and not torch.allclose(moved, plain)  # reused deep, fresh shallow


def test_generation_runs_the_deep_blocks_every_nth_step_only():
    pipe = make_tiny_pipeline()
    mid_runs = _counting(pipe.net.mid[0])
    settings = {"steps": 6, "sampler": "euler", "seed": 3, "sigma_max": 2.0}
    base = pipe.generate("a red circle", **settings)
    assert mid_runs[0] == 6  # one chunk per step: 1 image + its unguided twin
    assert np.array_equal(
        np.asarray(pipe.generate("a red circle", deep_cache=1, **settings)[0]), np.asarray(base[0])
    )
    mid_runs[0] = 0
    cached = pipe.generate("a red circle", deep_cache=3, **settings)
    assert mid_runs[0] == 2  # steps 0 and 3
    assert pipe.net.feature_cache is None  # taken off again
    assert not np.array_equal(np.asarray(cached[0]), np.asarray(base[0]))
    assert cached[0].info["noisecraft"]["deep_cache"] == 3


@pytest.mark.parametrize("bad", [0, 11, 2.5, "3", True])
def test_bad_intervals_are_refused_by_the_option(bad):
    with pytest.raises(OptionError, match="deep_cache"):
        SamplingOptions(deep_cache=bad)


def test_a_net_without_a_decoder_is_refused():
    class Flat(torch.nn.Module):
        net = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="deep_cache needs a U-Net model; this one is Linear"):
        with reuse_features(Flat(), 2):
            pass


def test_features_kept_for_other_prompts_are_not_reused():
    """A chunk whose rows change (guidance switching on at a --guidance-interval edge puts unguided
    twins where padding was) runs in full rather than on another row's deep features."""
    net = _randomised(UNet(TINY), 1)
    mid_runs = _counting(net.mid[0])
    x, c, cond = _inputs()
    other = Conditioning(cond.tokens.flip(0), cond.mask, cond.pooled)  # the same rows, swapped
    cache = FeatureCache(interval=3)
    net.feature_cache = cache
    with torch.no_grad():
        for run in (cond, other, other):
            cache.next_call()
            net(x, c, run)
    net.feature_cache = None
    assert mid_runs[0] == 2 and (cache.full_runs, cache.shallow_runs) == (2, 1)
