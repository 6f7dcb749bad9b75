"""SDTextEncoder against diffusers' own encode_prompt, with tiny random CLIP text models.

The pipelines are built from the text side only (vae, unet and scheduler None). Prompts avoid '!':
diffusers' SD2/SDXL tokenizers read it as their pad token (see test_clip_tokenizer.test_open_clip_padding).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_clip_tokenizer import reference_tokenizer, write_reference_files

from noisecraft.components import load_component, save_component
from noisecraft.text import SDTextEncoder, TextEncoder
from noisecraft.text.clip import spec_from_state_dict

pytestmark = pytest.mark.filterwarnings("ignore:.*were truncated")  # the long prompt, on purpose
PROMPTS = ["a photo of a cat", "", "It's a CAFÉ, naïve 🍉 at 4K?", "astronaut riding a horse " * 20]
TOLERANCE = 1e-5


def tiny_clip(seed: int, hidden: int = 32, act: str = "quick_gelu", projection: int | None = None):
    """A random 3-layer CLIP text model (2 heads) as the step-3 brief describes, fixed by ``seed``."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        hidden_size=hidden,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection or hidden,
    )
    model = CLIPTextModel(config) if projection is None else CLIPTextModelWithProjection(config)
    return model.eval()


def without_last_layer(model):
    """diffusers' SD2 conversion: the same text model with its last transformer layer dropped."""
    from transformers import CLIPTextModel

    config = model.config.__class__(**{**model.config.to_dict(), "num_hidden_layers": 2})
    short = CLIPTextModel(config).eval()
    short.load_state_dict({k: v for k, v in model.state_dict().items() if "layers.2." not in k})
    return short


def with_text_model_alias(model):
    """diffusers 0.42's clip_skip path calls ``text_encoder.text_model.final_layer_norm``, which
    transformers 5's CLIPTextModel no longer has (it is the text model itself): alias it."""
    object.__setattr__(model, "text_model", SimpleNamespace(final_layer_norm=model.final_layer_norm))
    return model


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, object]:
    folder = write_reference_files(tmp_path_factory.mktemp("clip_vocab"))
    return {"eos": reference_tokenizer(folder), "!": reference_tokenizer(folder, pad_token="!")}


def sd_embeddings(text_encoder, tokenizer, clip_skip: int | None = None) -> torch.Tensor:
    """diffusers' StableDiffusionPipeline.encode_prompt for PROMPTS."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=None, text_encoder=text_encoder, tokenizer=tokenizer, unet=None, scheduler=None,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    with torch.no_grad():
        embeddings, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False, clip_skip=clip_skip)
    return embeddings


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def check_conditioning(encoder: SDTextEncoder, expected: torch.Tensor, pooled: torch.Tensor) -> None:
    cond = encoder(PROMPTS)
    assert max_difference(cond.tokens, expected) <= TOLERANCE
    assert max_difference(cond.pooled, pooled) <= TOLERANCE
    assert cond.mask.shape == (len(PROMPTS), 77) and cond.mask.all()  # SD attends to padding too
    assert encoder.dim == expected.shape[-1] and encoder.max_length == 77


def pooler(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return model(ids.input_ids).pooler_output


def test_sd1_matches_diffusers(tokenizers) -> None:
    model = tiny_clip(0)
    encoder = SDTextEncoder.from_state_dicts("sd1", model.state_dict(), heads=2)
    assert isinstance(encoder, TextEncoder)
    check_conditioning(encoder, sd_embeddings(model, tokenizers["eos"]), pooler(model, tokenizers["eos"]))


def test_clip_skip_matches_diffusers(tokenizers) -> None:
    """SD1 with diffusers' clip_skip=1 (A1111's "Clip skip: 2"): penultimate state, final norm applied."""
    model = with_text_model_alias(tiny_clip(1))
    encoder = SDTextEncoder.from_state_dicts("sd1", model.state_dict(), heads=2, skip_layers=1)
    expected = sd_embeddings(model, tokenizers["eos"], clip_skip=1)
    check_conditioning(encoder, expected, pooler(model, tokenizers["eos"]))


def test_sd2_matches_diffusers(tokenizers) -> None:
    """OpenCLIP tower (GELU, pad 0) read at its penultimate layer + final norm, as ldm does; diffusers
    stores the tower without its last layer and reads that model's last layer: the same numbers."""
    full = tiny_clip(2, act="gelu")
    short = without_last_layer(full)
    expected = sd_embeddings(short, tokenizers["!"])
    assert max_difference(expected, sd_embeddings(with_text_model_alias(full), tokenizers["!"], 1)) == 0
    from_full = SDTextEncoder.from_state_dicts("sd2", full.state_dict(), heads=2, skip_layers=1)
    from_short = SDTextEncoder.from_state_dicts("sd2", short.state_dict(), heads=2, skip_layers=0)
    check_conditioning(from_short, expected, pooler(short, tokenizers["!"]))
    assert max_difference(from_full(PROMPTS).tokens, expected) <= TOLERANCE
    last = SDTextEncoder.from_state_dicts("sd2", full.state_dict(), heads=2, skip_layers=0)
    assert max_difference(last(PROMPTS).tokens, expected) > 1e-2  # the layer choice is what is tested


def test_sdxl_matches_diffusers(tokenizers) -> None:
    """Two encoders, penultimate states without final norm, concatenated; pooled = bigG's projection."""
    from diffusers import StableDiffusionXLPipeline

    clip_l = tiny_clip(3)
    clip_g = tiny_clip(4, hidden=48, act="gelu", projection=40)
    pipe = StableDiffusionXLPipeline(
        vae=None, text_encoder=clip_l, text_encoder_2=clip_g, tokenizer=tokenizers["eos"],
        tokenizer_2=tokenizers["!"], unet=None, scheduler=None,
    )  # fmt: skip
    with torch.no_grad():
        expected, _, pooled, _ = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=False)
    encoder = SDTextEncoder.from_state_dicts("sdxl", clip_l.state_dict(), clip_g.state_dict(), heads=2)
    assert expected.shape == (len(PROMPTS), 77, 32 + 48) and pooled.shape == (len(PROMPTS), 40)
    check_conditioning(encoder, expected, pooled)


def test_shapes_from_tensors() -> None:
    model = tiny_clip(5, hidden=64, act="gelu", projection=24)
    spec = spec_from_state_dict(model.state_dict())
    assert (spec.hidden_size, spec.layers, spec.intermediate_size) == (64, 3, 37)
    assert (spec.vocab_size, spec.positions, spec.projection_dim, spec.heads) == (49408, 77, 24, None)
    assert spec.hf_config().num_attention_heads == 1  # hidden / 64 unless told
    prefixed = {f"text_model.{k}": v for k, v in tiny_clip(6).state_dict().items()}  # diffusers' files
    SDTextEncoder.from_state_dicts("sd1", prefixed, heads=2)
    broken = dict(tiny_clip(6).state_dict())
    broken.pop("final_layer_norm.bias")
    with pytest.raises(RuntimeError, match="final_layer_norm.bias"):  # strict load
        SDTextEncoder.from_state_dicts("sd1", broken, heads=2)
    with pytest.raises(ValueError, match="pass skip_layers"):  # 3 layers: neither ViT-H layout
        SDTextEncoder.from_state_dicts("sd2", tiny_clip(6, act="gelu").state_dict(), heads=2)


def test_save_load_round_trip(tmp_path: Path) -> None:
    encoder = SDTextEncoder.from_state_dicts(
        "sdxl",
        tiny_clip(7).state_dict(),
        tiny_clip(8, hidden=48, act="gelu", projection=40).state_dict(),
        heads=2,
    )
    save_component(encoder, tmp_path / "clip")
    record = json.loads((tmp_path / "clip" / "config.json").read_text())
    assert record["type"] == "sd_clip" and [e["activation"] for e in record["config"]["encoders"]] == [
        "quick_gelu",
        "gelu",
    ]
    loaded = load_component(tmp_path / "clip", SDTextEncoder)
    assert loaded.config == encoder.config
    a, b = encoder(PROMPTS[:3]), loaded(PROMPTS[:3])
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.pooled, b.pooled)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.train().encoders.training
