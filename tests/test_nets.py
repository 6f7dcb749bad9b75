"""Networks: shapes, padding masks, batch independence, gradients, save/load, FLOP counts, bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from noisecraft.components import load_component, save_component
from noisecraft.conditioning import Conditioning
from noisecraft.nets import DiT, DiTConfig, NoiseEmbedding, TransformerBlock, UNet, UNetConfig
from noisecraft.nets.layers import TokenLinear

TEXT_DIM = 12
KINDS = ("unet", "unet-refined", "dit", "dit-joint")  # refined: a TokenRefiner, attention positions


def make_net(kind: str, in_channels: int = 3, text_dim: int = TEXT_DIM, seed: int = 0) -> torch.nn.Module:
    """A tiny network (widths 8/16, two levels of attention) whose zero-initialised layers are perturbed.

    Zero-initialised output layers make a fresh net output exactly 0 and block every gradient
    upstream of them, which would make the mask, batch and gradient tests vacuous; filling every
    all-zero parameter (zero-inits and zero biases) with small noise makes each path contribute.
    """
    torch.manual_seed(seed)  # nn.Module initialisers draw from the global generator
    if kind.startswith("unet"):
        config = UNetConfig(
            image_size=16,
            in_channels=in_channels,
            channels=8,
            channel_mult=(1, 2, 2),
            blocks_per_level=1,
            attention_resolutions=(8, 4),
            head_dim=8,
            text_dim=text_dim,
            text_layers=2 if kind == "unet-refined" and text_dim else 0,
            text_width=16,
            text_window=3 if kind == "unet-refined" and text_dim else 0,
            attention_positions=kind == "unet-refined",
            text_layout=kind == "unet-refined" and text_dim > 0,
        )
        net = UNet(config)
    else:
        text_attention = "joint" if kind == "dit-joint" else "cross"
        config = DiTConfig(
            image_size=16,
            in_channels=in_channels,
            patch_size=2,
            dim=32,
            depth=2,
            head_dim=8,
            text_dim=text_dim,
            text_attention=text_attention,
            noise_channels=16,
        )
        net = DiT(config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    return net.eval()


def make_cond(
    lengths: list[int], pad_to: int, generator: torch.Generator, dtype=torch.float32
) -> Conditioning:
    """Random prompts with the given numbers of real tokens, padded (with random values) to pad_to."""
    tokens = torch.randn(len(lengths), pad_to, TEXT_DIM, generator=generator, dtype=dtype)
    mask = torch.arange(pad_to)[None, :] < torch.tensor(lengths)[:, None]
    return Conditioning(tokens, mask, torch.randn(len(lengths), TEXT_DIM, generator=generator, dtype=dtype))


def inputs(batch: int, channels: int, size: int, seed: int = 0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, size, size, generator=generator, dtype=dtype)
    c_noise = torch.randn(batch, generator=generator, dtype=dtype)
    return x, c_noise, generator


@pytest.mark.parametrize("kind", KINDS)
def test_fresh_net_outputs_zero(kind):
    """The zero-initialised output layer (ADM; DiT's adaLN-Zero) makes an untrained net output exactly 0."""
    torch.manual_seed(0)
    net = UNet(
        UNetConfig(image_size=8, channels=8, channel_mult=(1, 2), attention_resolutions=(4,), head_dim=8)
    )
    if not kind.startswith("unet"):
        net = DiT(DiTConfig(image_size=8, in_channels=3, dim=32, depth=1, head_dim=8, noise_channels=16))
    x, c_noise, _ = inputs(2, 3, 8)
    assert torch.equal(net(x, c_noise), torch.zeros_like(x))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_output_shape_any_divisible_size(kind, channels):
    net = make_net(kind, in_channels=channels)
    for size in (8, 16, 24):
        x, c_noise, generator = inputs(2, channels, size)
        out = net(x, c_noise, make_cond([3, 5], 6, generator))
        assert out.shape == x.shape
        assert torch.isfinite(out).all() and out.abs().max() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_padding_tokens_change_nothing(kind):
    """Appending padding (random values, mask False) or changing the values under the mask leaves the output.

    float64 so the only differences are rounding in differently-sized kernels (≈ 1e-16 relative).
    """
    net = make_net(kind).double()
    x, c_noise, generator = inputs(3, 3, 16, dtype=torch.float64)
    cond = make_cond([2, 5, 1], 5, generator, dtype=torch.float64)
    out = net(x, c_noise, cond)

    extra = torch.randn(3, 4, TEXT_DIM, generator=generator, dtype=torch.float64)
    padded = Conditioning(
        torch.cat([cond.tokens, extra], dim=1),
        torch.cat([cond.mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1),
        cond.pooled,
    )
    noisy_padding = torch.where(cond.mask[..., None], cond.tokens, 100 * torch.randn_like(cond.tokens))
    repadded = Conditioning(noisy_padding, cond.mask, cond.pooled)
    torch.testing.assert_close(net(x, c_noise, padded), out, rtol=0, atol=1e-12)
    torch.testing.assert_close(net(x, c_noise, repadded), out, rtol=0, atol=1e-12)

    # The test is not vacuous: changing a real token does change the output.
    changed = cond.tokens.clone()
    changed[0, 0] += 1.0
    assert (net(x, c_noise, Conditioning(changed, cond.mask, cond.pooled)) - out)[0].abs().max() > 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_batch_independence(kind):
    """Row i of a batch equals the net on row i alone (no batch statistics, masks kept per row)."""
    net = make_net(kind)
    x, c_noise, generator = inputs(3, 3, 16)
    cond = make_cond([4, 1, 6], 6, generator)
    out = net(x, c_noise, cond)
    for i in range(3):
        alone = net(x[i : i + 1], c_noise[i : i + 1], cond[i : i + 1])
        torch.testing.assert_close(out[i : i + 1], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_reaches_every_parameter(kind):
    net = make_net(kind).train()
    x, c_noise, generator = inputs(2, 3, 16)
    net(x, c_noise, make_cond([3, 6], 6, generator)).square().mean().backward()
    dead = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip_is_bit_identical(kind, tmp_path):
    net = make_net(kind, in_channels=4)
    x, c_noise, generator = inputs(2, 4, 16)
    cond = make_cond([2, 4], 5, generator)
    save_component(net, tmp_path / "net")
    loaded = load_component(tmp_path / "net", expected=torch.nn.Module)
    assert type(loaded) is type(net) and loaded.config == net.config
    assert torch.equal(loaded(x, c_noise, cond), net(x, c_noise, cond))


def flop_counter() -> FlopCounterMode:
    """FlopCounterMode that also counts the CPU fused attention kernel (absent from torch's table)."""
    aten = torch.ops.aten

    def cpu_sdpa(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(q_shape, k_shape, v_shape)

    return FlopCounterMode(
        display=False, custom_mapping={aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    )


@pytest.mark.parametrize("kind", KINDS)
def test_flops_per_image_matches_flop_counter(kind):
    net = make_net(kind)
    for size, text_len in ((16, 7), (8, 3)):
        x, c_noise, generator = inputs(1, 3, size)
        with flop_counter() as counter, torch.no_grad():
            net(x, c_noise, make_cond([2], text_len, generator))
        assert counter.get_total_flops() > 0
        assert net.flops_per_image(text_len, image_size=size) == counter.get_total_flops()


@pytest.mark.parametrize("kind", KINDS)
def test_unconditional_and_empty_prompt(kind):
    net = make_net(kind)
    x, c_noise, generator = inputs(2, 3, 16)
    uncond = net(x, c_noise, None)
    assert torch.isfinite(uncond).all()
    cond = make_cond([0, 3], 4, generator)  # row 0: an empty prompt with no real token
    out = net(x, c_noise, cond)
    assert torch.isfinite(out).all()
    assert (out[1] - uncond[1]).abs().max() > 1e-4  # the prompt matters
    # The empty row attends to nothing: its token values cannot matter.
    other = Conditioning(torch.randn(cond.tokens.shape, generator=generator), cond.mask, cond.pooled)
    torch.testing.assert_close(net(x, c_noise, other)[0], out[0], rtol=0, atol=1e-6)
    # text_dim=0: an unconditional-only net.
    plain = make_net(kind, text_dim=0)
    assert torch.isfinite(plain(x, c_noise)).all()


def test_cross_attention_to_an_empty_prompt_contributes_exactly_zero():
    """A row with no real token attends to nothing: zero output (not NaN, not the projection bias),
    so a transformer block given an empty prompt equals the block given no prompt at all."""
    torch.manual_seed(0)
    block = TransformerBlock(16, 8, TEXT_DIM, mlp_ratio=2)
    torch.nn.init.normal_(block.cross.out.bias)  # a nonzero bias would leak through a plain masking
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 16, generator=generator)
    cond = make_cond([0, 3], 4, generator)
    cross = block.cross(block.norm2(x), cond.tokens, cond.mask)  # [2, 5, 16]
    assert torch.equal(cross[0], torch.zeros(5, 16)) and cross[1].abs().max() > 0
    torch.testing.assert_close(block(x, cond.tokens, cond.mask)[0], block(x[:1])[0], rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_channels_last_input_gives_the_same_output(kind):
    net = make_net(kind)
    x, c_noise, generator = inputs(2, 3, 16)
    cond = make_cond([3, 6], 6, generator)
    fast = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), c_noise, cond)
    torch.testing.assert_close(fast, net(x.contiguous(), c_noise, cond), rtol=0, atol=1e-5)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_unet_runs_nhwc_on_cpu_and_hands_back_nchw():
    net = make_net("unet")
    x, c_noise, generator = inputs(2, 3, 16)
    cond = make_cond([3, 6], 6, generator)
    layouts = []
    net.conv_out.register_forward_pre_hook(
        lambda _, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    net.nhwc_on_cpu = True  # forced: by default the ISA's row of nets/kernels.TABLE decides
    out = net(x, c_noise, cond)
    net.nhwc_on_cpu = False
    reference = net(x, c_noise, cond)
    assert layouts == [True, False] and out.is_contiguous() and reference.abs().max() > 1e-3
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_bad_inputs_raise_value_error(kind):
    net = make_net(kind)
    x, c_noise, generator = inputs(2, 3, 16)
    cond = make_cond([3, 6], 6, generator)
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        net(x[:, :1], c_noise, cond)
    with pytest.raises(ValueError, match="divisible by"):
        net(x[..., :15, :15], c_noise, cond)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        net(x[0], c_noise, cond)
    wide = Conditioning(torch.zeros(2, 6, TEXT_DIM + 1), cond.mask, torch.zeros(2, TEXT_DIM + 1))
    with pytest.raises(ValueError, match=f"cond.tokens must be \\[2, L, {TEXT_DIM}\\]"):
        net(x, c_noise, wide)
    with pytest.raises(ValueError, match="cond.mask must be bool"):
        net(x, c_noise, Conditioning(cond.tokens, cond.mask.float(), cond.pooled))
    with pytest.raises(ValueError, match="c_noise must be a scalar or shape"):
        net(x, c_noise[:1], cond)
    with pytest.raises(ValueError, match="unconditional"):
        make_net(kind, text_dim=0)(x, c_noise, cond)


def test_bad_configs_raise_value_error():
    with pytest.raises(ValueError, match="match no level"):
        UNetConfig(image_size=32, channel_mult=(1, 2), attention_resolutions=(8,))
    with pytest.raises(ValueError, match="not divisible"):
        UNetConfig(image_size=30, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="head_dim"):
        UNetConfig(channels=24, head_dim=32)
    with pytest.raises(ValueError, match="patch_size"):
        DiTConfig(image_size=15, patch_size=2)
    with pytest.raises(ValueError, match="text_attention"):
        DiTConfig(text_attention="concat")
    with pytest.raises(ValueError, match="text_layers"):
        UNetConfig(text_layers=2)  # a refiner needs a prompt (text_dim > 0)
    with pytest.raises(ValueError, match="text_layout needs text_dim"):
        UNetConfig(text_layout=True)
    with pytest.raises(ValueError, match="text_layers"):
        UNetConfig(text_dim=12, text_layers=1, text_width=20, head_dim=8)
    with pytest.raises(ValueError, match="text_window"):
        UNetConfig(text_dim=12, text_layers=1, text_width=16, head_dim=8, text_window=2)
    with pytest.raises(ValueError, match="text_window"):
        UNetConfig(text_dim=12, text_window=3)  # the window is part of the refiner


def test_a_token_refiner_grows_a_trained_unet_without_changing_what_it_computes(tmp_path):
    """model.init with init_new=["text_refiner", "pos_proj"]: the trained weights are copied, the new
    refiner and attention positions start at zero, so the grown net computes the same function until
    trained; without init_new the missing parameters are one clear error."""
    from noisecraft.training.build import init_from

    trained = make_net("unet")
    save_component(trained, tmp_path / "net")
    grown_config = dataclasses.replace(
        trained.config,
        text_layers=2,
        text_width=16,
        text_window=3,
        attention_positions=True,
        text_layout=True,
    )
    grown = UNet(grown_config).eval()
    with pytest.raises(ValueError, match="lacks: .*pos_proj"):
        init_from(grown, str(tmp_path), ["text_refiner", "layout"])
    init_from(grown, str(tmp_path), ["text_refiner", "pos_proj", "layout"])
    x, c_noise, generator = inputs(2, 3, 16)
    cond = make_cond([3, 6], 6, generator)
    assert torch.equal(grown(x, c_noise, cond), trained(x, c_noise, cond))
    refiner = grown.text_refiner
    for new in (refiner.proj_out, grown.mid[0].attn.pos_proj, grown.mid[0].attn.layout.out):
        with torch.no_grad():  # once its output layer moves, the new module does change the prediction
            new.weight.normal_(generator=generator)
        assert (grown(x, c_noise, cond) - trained(x, c_noise, cond)).abs().max() > 1e-4
        if new is refiner.proj_out:  # the phrase window acts through the refiner's output layer
            before = grown(x, c_noise, cond)
            with torch.no_grad():
                refiner.phrase.weight.normal_(generator=generator)
            assert (grown(x, c_noise, cond) - before).abs().max() > 1e-4
        with torch.no_grad():
            new.weight.zero_()
    with pytest.raises(ValueError, match="lacks: .*(pos_proj|layout).*init_new"):
        init_from(grown, str(tmp_path))


def test_noise_embedding_closed_form():
    """Positional features are cos/sin(scale·c·f_k) with f_k = 10⁴^(−k/half); a scalar c_noise broadcasts."""
    embed = NoiseEmbedding(8, scale=2.0)
    c = torch.tensor([0.0, -0.75, 999.0])
    freqs = torch.tensor([1.0, 1e-1, 1e-2, 1e-3])
    expected = torch.cat([(2 * c[:, None] * freqs).cos(), (2 * c[:, None] * freqs).sin()], dim=1)
    torch.testing.assert_close(embed(c), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown noise embedding"):
        NoiseEmbedding(8, kind="learned")
    net = make_net("unet")
    x, _, generator = inputs(2, 3, 16)
    cond = make_cond([1, 2], 2, generator)
    assert torch.equal(net(x, 0.5, cond), net(x, torch.full((2,), 0.5), cond))


def test_cross_attention_ignores_token_order_and_the_token_refiner_does_not():
    """Swapping two prompt tokens leaves a plain U-Net's output unchanged (cross-attention is a
    weighted set of keys, and the pooled vector is kept fixed here); the TokenRefiner's positions
    make the order count, which is what "a red circle left of a blue square" needs."""
    x, c_noise, generator = inputs(2, 3, 16)
    cond = make_cond([5, 5], 5, generator)
    order = torch.tensor([1, 0, 2, 3, 4])
    swapped = Conditioning(cond.tokens[:, order], cond.mask[:, order], cond.pooled)
    plain, refined = make_net("unet"), make_net("unet-refined")
    torch.testing.assert_close(plain(x, c_noise, swapped), plain(x, c_noise, cond), rtol=0, atol=1e-5)
    assert (refined(x, c_noise, swapped) - refined(x, c_noise, cond)).abs().max() > 1e-3


def test_the_refiners_phrase_window_mixes_neighbouring_tokens_only():
    """text_window=3: the convolution adds tokens i−1 and i+1 to token i, nothing further away, and
    padding adds nothing (so a noun's state can carry its adjective)."""
    refiner = make_net("unet-refined", text_dim=12).text_refiner
    _, _, generator = inputs(1, 3, 16)
    h = torch.randn(1, 7, 16, generator=generator)  # [B, L, width]
    mask = torch.tensor([[True] * 6 + [False]])
    with torch.no_grad():
        out = refiner.mix_phrases(h, mask)
        moved = h.clone()
        moved[0, 2] += 1.0
        changed = refiner.mix_phrases(moved, mask) - out  # [1, 7, 16]
    assert changed[0, 1:4].abs().amax(-1).min() > 1e-3  # tokens 1, 2, 3 see token 2
    assert changed[0, [0, 4, 5]].abs().max() == 0  # the rest do not
    cond = make_cond([6], 7, generator)
    padded = Conditioning(cond.tokens.clone(), cond.mask, cond.pooled)
    padded.tokens[0, 6] += 5.0  # a padding token's features
    real = refiner(cond.tokens, cond.mask)[0, :6]
    torch.testing.assert_close(refiner(padded.tokens, padded.mask)[0, :6], real)


def test_text_layout_is_a_map_of_the_prompt_alone_computed_once_per_prompt():
    """TextLayout's queries are positions, not image features: its map varies over the picture and
    with the prompt, not with the noisy input, and at inference it runs once per prompt."""
    net = make_net("unet-refined")
    layout = net.down[2].attn.layout  # the 8×8 level of the 16×16 test net
    calls = count_calls(layout.attn.to_q)
    _, _, generator = inputs(2, 3, 16)
    cond, other = make_cond([3, 6], 6, generator), make_cond([4, 2], 6, generator)
    with torch.no_grad():
        a = layout(cond.tokens, cond.mask, 8, 8)  # [B, 64, C]
        assert a.shape == (2, 64, 16) and (a - a.mean(1, keepdim=True)).abs().max() > 1e-3  # varies in space
        assert (layout(other.tokens, other.mask, 8, 8) - a).abs().max() > 1e-3  # and with the prompt
        assert calls == [2]
        x, c_noise, _ = inputs(2, 3, 16, seed=1)
        net(x, c_noise, cond), net(x * 2, c_noise, cond)  # two sampler steps (of the refined tokens)
        assert calls == [3] and torch.equal(layout(cond.tokens, cond.mask, 8, 8), a)  # once, then reused
    net(x, c_noise, cond)  # under autograd (training) nothing is reused
    assert calls == [4]


def count_calls(module: torch.nn.Module) -> list[int]:
    """A one-element counter of the module's forward calls."""
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_inference_reuses_the_prompts_text_work_across_steps_and_gives_the_same_output():
    """At inference a sampler calls the net at every step with the same prompt (a fresh but equal
    Conditioning each time under guidance): the TokenRefiner and every cross-attention's keys and
    values run once, and each output equals the one computed without reuse (autograd on)."""
    net = make_net("unet-refined")
    refiner_calls = count_calls(net.text_refiner.proj_in)
    kv_calls = count_calls(net.mid[0].attn.block.cross.to_kv)
    x, c_noise, generator = inputs(2, 3, 16)
    cond, other = make_cond([3, 6], 6, generator), make_cond([2, 4], 6, generator)
    expected = [net(x * (1 + step), c_noise, cond) for step in range(3)]  # autograd on: nothing reused
    expected_other = net(x, c_noise, other)
    assert refiner_calls == [4] and kv_calls == [4]
    with torch.no_grad():
        for step in range(3):
            equal_copy = Conditioning(cond.tokens.clone(), cond.mask.clone(), cond.pooled)
            assert torch.equal(net(x * (1 + step), c_noise, equal_copy), expected[step])
        assert refiner_calls == [5] and kv_calls == [5]
        assert torch.equal(net(x, c_noise, other), expected_other)  # another prompt: computed afresh
        assert refiner_calls == [6] and kv_calls == [6]


def test_inference_reuse_notices_new_weights_and_edited_prompts():
    """Loading other weights (in place) or editing the prompt tensor in place recomputes the text work."""
    net, other = make_net("unet-refined"), make_net("unet-refined", seed=5)
    x, c_noise, generator = inputs(2, 3, 16)
    cond = make_cond([3, 6], 6, generator)
    with torch.no_grad():
        net(x, c_noise, cond)
        net.load_state_dict(other.state_dict())
        assert torch.equal(net(x, c_noise, cond), other(x, c_noise, cond))
        cond.tokens.mul_(-1)
        assert torch.equal(
            net(x, c_noise, cond),
            other(x, c_noise, Conditioning(cond.tokens.clone(), cond.mask, cond.pooled)),
        )


@pytest.mark.parametrize("shape", [(2, 64, 48), (3, 5, 48), (48,)])
def test_token_linear_computes_what_nn_linear_does_with_the_same_gradients(shape):
    """Rows in multiples of 16 go through the 1×1-convolution path; 15 rows and a lone vector fall back."""
    torch.manual_seed(0)
    layer = TokenLinear(48, 80)
    reference = torch.nn.Linear(48, 80)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(shape, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, out_ref = layer(x), reference(x_ref)
    assert out.shape == out_ref.shape == (*shape[:-1], 80)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_token_linear_runs_as_a_onednn_convolution_only_where_that_is_safe():
    from torch.profiler import profile

    layer = TokenLinear(32, 32)

    def ops(x: torch.Tensor) -> set[str]:
        with torch.no_grad(), profile() as prof:
            layer(x)
        return {event.key for event in prof.key_averages()}

    assert "aten::mkldnn_convolution" in ops(torch.randn(2, 64, 32))
    assert "aten::mkldnn_convolution" not in ops(torch.randn(2, 32, 64).transpose(1, 2))  # not contiguous
    assert "aten::mkldnn_convolution" not in ops(torch.randn(3, 5, 32))  # 15 rows
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        assert "aten::mkldnn_convolution" not in ops(torch.randn(2, 64, 32))
    finally:
        torch.backends.mkldnn.enabled = enabled


@pytest.mark.parametrize("kind", ["unet", "unet-refined", "dit-joint"])
def test_networks_trace_as_one_graph_for_torch_compile(kind):
    """A graph break (e.g. reading torch.backends flags inside TokenLinear) splits the network into
    many small compiled pieces that recompile per shape and hit dynamo's recompile limit."""
    net = make_net(kind).train()
    x, c_noise, generator = inputs(2, 3, 16)
    explanation = torch._dynamo.explain(net)(x, c_noise, make_cond([3, 6], 16, generator))
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1
