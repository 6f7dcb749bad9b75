"""LoRA files for Stable Diffusion, read into our modules and checked against diffusers/peft: a peft
adapter with random non-zero weights on a tiny random SD pipeline, saved with diffusers' own
``save_lora_weights`` (diffusers names) and renamed to kohya's names; diffusers loads the kohya file
itself, and our U-Net output and images match what diffusers computes with the adapter."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from sd_helpers import tiny_sd_pipeline
from test_stable_diffusion import diffusers_images, ours, starting_noise

from noisecraft.conditioning import Conditioning
from noisecraft.formats.unet import unet_config_from_diffusers, unet_map
from noisecraft.nets.lora import AdapterError
from noisecraft.pipeline import Pipeline

peft = pytest.importorskip("peft")

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "conv_shortcut"]  # fmt: skip
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1"]


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """(diffusers pipeline with the adapter active, our pipeline of the base weights, diffusers file)."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    tmp = tmp_path_factory.mktemp("lora")
    pipe = tiny_sd_pipeline(tmp)
    pipe.save_pretrained(tmp / "folder", safe_serialization=True)
    unet_config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=UNET_TARGETS)
    text_config = LoraConfig(r=2, lora_alpha=3, init_lora_weights=False, target_modules=TEXT_TARGETS)
    torch.manual_seed(3)
    pipe.unet.add_adapter(unet_config)
    inject_adapter_in_model(text_config, pipe.text_encoder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        StableDiffusionPipeline.save_lora_weights(
            tmp / "lora", unet_lora_layers=get_peft_model_state_dict(pipe.unet),
            text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
            unet_lora_adapter_metadata=unet_config.to_dict(),
            text_encoder_lora_adapter_metadata=text_config.to_dict(),
        )  # fmt: skip
    file = next((tmp / "lora").glob("*.safetensors"))
    return pipe, Pipeline.load(tmp / "folder"), file, tmp


def kohya_names(diffusers_file, alphas: dict[str, float], layout: str = "diffusers", config=None) -> dict:
    """A diffusers-named LoRA file's tensors under kohya's names (U-Net modules in diffusers' layout, or
    in the original single file's, through the table tests/test_sd_unet.py checks against diffusers)."""
    original = {}
    if layout == "original":
        d_map, o_map = unet_map(config, "diffusers").entries, unet_map(config, "original").entries
        original = {d: o for k in d_map for d, o in zip(d_map[k], o_map.get(k, []))}
    out = {}
    for key, tensor in load_file(str(diffusers_file)).items():
        root, _, rest = key.partition(".")
        module, _, part = rest.rpartition(".lora_")
        if root == "unet":
            module = original.get(f"{module}.weight", f"{module}.weight").removesuffix(".weight")
            name = f"lora_unet_{module.replace('.', '_')}"
        else:
            name = f"lora_te_text_model_{module.replace('.', '_')}"
        out[f"{name}.{'lora_down' if part.startswith('A') else 'lora_up'}.weight"] = tensor
        out[f"{name}.alpha"] = torch.tensor(alphas[root])
    return out


def unet_outputs(net_call, g_seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(g_seed)
    x, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 64, generator=g)
    return torch.cat([net_call(x, torch.tensor([t, t]), context) for t in (1.0, 500.0, 999.0)])


def ours_unet(pipe: Pipeline):
    mask = torch.ones(2, 77, dtype=torch.bool)
    return lambda x, t, c: pipe.net(x, t, Conditioning(c, mask, torch.zeros(2, 64)))


def test_a_diffusers_lora_file_makes_diffusers_images(sd):
    reference, loaded, file, _ = sd
    want = diffusers_images(reference, starting_noise(), steps=10, guidance=7.5)  # Euler, trailing
    base = ours(loaded, steps=10, sampler="euler", schedule="trailing", guidance=7.5)
    loaded.add_lora(file)
    try:
        got = ours(loaded, steps=10, sampler="euler", schedule="trailing", guidance=7.5)
        with torch.no_grad():
            theirs = unet_outputs(lambda x, t, c: reference.unet(x, t, encoder_hidden_states=c).sample)
            mine = unet_outputs(ours_unet(loaded))
    finally:
        loaded.clear_loras()
    assert (mine - theirs).abs().max() <= 1e-5
    assert (got - want).abs().max() <= 1e-4
    assert (base - want).abs().max() > 0.05  # the adapter changes the picture
    # scale 0, and the adapters removed: the base model's image, bit for bit
    loaded.add_lora(file, 0.0)
    assert torch.equal(ours(loaded, steps=10, sampler="euler", schedule="trailing", guidance=7.5), base)
    loaded.clear_loras()


def test_a_kohya_file_is_what_diffusers_reads_from_it(sd):
    from diffusers import UNet2DConditionModel

    reference, loaded, file, tmp = sd
    kohya = kohya_names(file, {"unet": 8.0, "text_encoder": 3.0})
    save_file(kohya, str(tmp / "kohya.safetensors"))
    config = unet_config_from_diffusers(dict(reference.unet.config))
    save_file(kohya_names(file, {"unet": 8.0, "text_encoder": 3.0}, "original", config),
              str(tmp / "kohya-original.safetensors"))  # fmt: skip
    peer = UNet2DConditionModel.from_pretrained(tmp / "folder" / "unet").eval()
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers

    converted, alphas = _convert_non_diffusers_lora_to_diffusers(dict(kohya))  # diffusers' reading of kohya
    peer.load_lora_adapter(converted, prefix="unet", network_alphas=alphas)
    # kohya's text-encoder names are the ones diffusers turns back into the file we started from
    from diffusers.utils import convert_state_dict_to_peft

    text = convert_state_dict_to_peft({k: v for k, v in converted.items() if k.startswith("text_encoder.")})
    text_keys = {k.replace("text_model.", "") for k in text}
    assert text_keys == {k for k in load_file(str(file)) if k.startswith("text_encoder.")}
    with torch.no_grad():
        theirs = unet_outputs(lambda x, t, c: peer(x, t, encoder_hidden_states=c).sample)
        results = []
        for name in ("kohya", "kohya-original"):
            loaded.add_lora(tmp / f"{name}.safetensors")
            results.append(unet_outputs(ours_unet(loaded)))
            text = loaded.encode(["a cat"]).tokens
            loaded.clear_loras()
    with torch.no_grad():
        want_text = reference.text_encoder(reference.tokenizer(["a cat"], padding="max_length",
                                           return_tensors="pt").input_ids)[0]  # fmt: skip
    assert (results[0] - theirs).abs().max() <= 1e-5 and torch.equal(results[0], results[1])
    assert (text - want_text).abs().max() <= 1e-5


def test_an_adapter_for_another_model_is_one_clear_error(sd, tmp_path):
    _, loaded, file, _ = sd
    state = load_file(str(file))
    key = next(k for k in state if "attn1.to_q.lora_A" in k)
    bigger = dict(state, **{key: torch.zeros(4, 48)})  # made for a 48-wide model
    save_file(bigger, str(tmp_path / "other.safetensors"))
    with pytest.raises(AdapterError, match="another model.*to_qkv"):
        loaded.add_lora(tmp_path / "other.safetensors")
    stray = {"lora_unet_no_such_layer.lora_down.weight": torch.zeros(2, 8),
             "lora_unet_no_such_layer.lora_up.weight": torch.zeros(8, 2)}  # fmt: skip
    save_file(stray, str(tmp_path / "x.safetensors"))
    with pytest.raises(AdapterError, match="no_such_layer names no layer"):
        loaded.add_lora(tmp_path / "x.safetensors")
    save_file({"lora_unet_conv_in.hada_w1_a": torch.zeros(2, 2)}, str(tmp_path / "loha.safetensors"))
    with pytest.raises(AdapterError, match="LoHa"):
        loaded.add_lora(tmp_path / "loha.safetensors")
    assert not loaded.adapter_set.active  # nothing was merged by the refused files
