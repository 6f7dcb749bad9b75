"""A closed-vocabulary model hears each prompt as the nearest caption it trained on (text.vocabulary)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_pipeline

from noisecraft.cli import main
from noisecraft.components import component_record, load_component, read_component_config, save_component
from noisecraft.model.vocabulary import add_vocabulary, read_captions
from noisecraft.pipeline import Pipeline
from noisecraft.text.builtin import BuiltinTextEncoder
from noisecraft.text.vocabulary import (
    VocabularyTextEncoder,
    VocabularyTextEncoderConfig,
    unwrap,
    wrapped_config,
)

CAPTIONS = ["two-hump camel", "penguin", "red apple", "alarm clock"]
PHRASES = {"bactrian camel": 0, "cop": 3}  # "cop" → "alarm clock": a phrase decides, not its words


def tiny_vocabulary() -> VocabularyTextEncoder:
    return VocabularyTextEncoder.build(make_tiny_pipeline().text_encoder, CAPTIONS, PHRASES)


def test_a_prompt_is_encoded_as_the_caption_of_its_most_similar_phrase():
    vocab = tiny_vocabulary()
    texts = CAPTIONS + list(PHRASES)
    means = [0, 1, 2, 3, 0, 3]
    prompts = ["a camel", "a penguin on ice", "zzz", "red", "something else entirely"]
    with torch.no_grad():
        rows = F.normalize(vocab.encoder(texts).pooled, dim=-1)
        for prompt in prompts:  # each alone: the vocabulary's rows came in one batch, the prompt alone
            sims = F.normalize(vocab.encoder([prompt]).pooled, dim=-1) @ rows.T
            caption, similarity = vocab.nearest([prompt])[0]
            assert caption == CAPTIONS[means[int(sims.argmax())]]
            assert similarity == pytest.approx(float(sims.max()), abs=1e-5)
        expected = vocab.encoder(vocab.heard(prompts))
        got = vocab(prompts)
    assert torch.equal(got.tokens, expected.tokens) and torch.equal(got.pooled, expected.pooled)


def test_exact_phrasings_and_the_empty_prompt_are_not_matched():
    vocab = tiny_vocabulary()
    assert vocab.nearest(["cop", "penguin", ""]) == [("alarm clock", 1.0), ("penguin", 1.0), ("", 1.0)]
    with torch.no_grad():
        assert torch.equal(vocab([""]).tokens, vocab.encoder([""]).tokens)  # guidance's unconditional side


def test_a_sentence_encoder_hears_a_paraphrase_as_its_caption():
    from noisecraft.text.minilm import MiniLMTextEncoder

    vocab = VocabularyTextEncoder.build(MiniLMTextEncoder(), CAPTIONS)
    heard = vocab.heard(
        ["a camel with two humps", "a cute baby penguin", "a shiny red fruit", "my wake-up clock"]
    )
    assert heard == CAPTIONS


def test_a_saved_vocabulary_loads_as_it_was_and_unwraps_for_training(tmp_path):
    vocab = tiny_vocabulary()
    save_component(vocab, tmp_path / "te", torch.float16)
    loaded = load_component(tmp_path / "te")
    assert isinstance(loaded, VocabularyTextEncoder) and loaded.config == vocab.config
    assert torch.allclose(loaded.vectors, vocab.vectors, atol=1e-3)  # stored as float16
    prompts = ["a camel", "penguins", "red"]
    assert loaded.heard(prompts) == vocab.heard(prompts)
    assert isinstance(unwrap(loaded), BuiltinTextEncoder) and unwrap(vocab.encoder) is vocab.encoder
    cls, config = wrapped_config(*read_component_config(tmp_path / "te"))
    assert cls is BuiltinTextEncoder and config == vocab.encoder.config


@pytest.mark.parametrize(
    "change, message",
    [
        ({"captions": ()}, "at least one caption"),
        ({"meanings": (0, 9)}, "caption indices"),
        ({"meanings": (0,)}, "2 phrases but 1 meanings"),
        ({"captions": ("ok", "")}, "non-empty strings"),
        ({"encoder": {"type": "vocabulary", "config": {}}}, "not a text encoder to wrap"),
        ({"encoder": {"type": "builtin_text"}}, "as a saved component records it"),
    ],
)
def test_a_damaged_vocabulary_config_is_refused(change, message):
    good = {
        "encoder": component_record(make_tiny_pipeline().text_encoder), "captions": tuple(CAPTIONS),
        "phrases": ("a", "b"), "meanings": (0, 1),
    }  # fmt: skip
    VocabularyTextEncoderConfig(**good)
    with pytest.raises(ValueError, match=message):
        VocabularyTextEncoderConfig(**(good | change))


def test_a_hostile_saved_vocabulary_is_one_clear_error(tmp_path):
    save_component(tiny_vocabulary(), tmp_path / "te")
    config = (tmp_path / "te" / "config.json").read_text()
    (tmp_path / "te" / "config.json").write_text(config.replace('"meanings": [', '"meanings": [99, '))
    with pytest.raises(ValueError, match="2 phrases but 3 meanings"):
        load_component(tmp_path / "te")


def test_caption_files_give_captions_and_phrases(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("# what the model trained on\nred apple\n\ncop\tpolice officer\nbobby\tpolice officer\n")
    assert read_captions(path) == (["red apple", "police officer"], {"cop": 1, "bobby": 1})
    for text, message in [("a\tb\tc\n", "phrase<TAB>caption"), ("# none\n", "no captions")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_captions(path)
    path.write_bytes(b"\xff\xfe caption")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_captions(path)


def test_the_vocabulary_command_copies_a_model_that_hears_its_captions(tmp_path, tiny_pipeline_dir, capsys):
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(CAPTIONS) + "\nbactrian camel\ttwo-hump camel\n")
    out = tmp_path / "with-vocabulary"
    assert main(["vocabulary", str(tiny_pipeline_dir), str(out), "--captions", str(captions)]) == 0
    pipe = Pipeline.load(out)
    assert pipe.heard(["bactrian camel", "penguin"]) == [("two-hump camel", 1.0), ("penguin", 1.0)]
    plain = Pipeline.load(tiny_pipeline_dir)
    assert plain.heard(["bactrian camel"]) == [("bactrian camel", 1.0)]
    image = np.asarray(pipe.generate("bactrian camel", seed=3)[0])
    assert np.array_equal(image, np.asarray(plain.generate("two-hump camel", seed=3)[0]))
    assert not np.array_equal(image, np.asarray(plain.generate("bactrian camel", seed=3)[0]))
    assert main(["vocabulary", str(tiny_pipeline_dir), str(out), "--captions", str(captions)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["vocabulary", str(tiny_pipeline_dir), str(tmp_path / "x"), "--captions", "missing.txt"]) == 2
    assert (
        main(["generate", "bactrian camel", "--model", str(out), "--out", str(tmp_path / "g"), "--quiet"])
        == 0
    )
    assert "'bactrian camel' is heard as 'two-hump camel' (similarity 1.00)" in capsys.readouterr().err


def test_a_model_given_a_vocabulary_twice_keeps_one(tmp_path, tiny_pipeline_dir):
    once = add_vocabulary(tiny_pipeline_dir, tmp_path / "once", CAPTIONS, {})
    twice = add_vocabulary(once, tmp_path / "twice", ["penguin"], {})
    encoder = Pipeline.load(twice).text_encoder
    assert isinstance(encoder, VocabularyTextEncoder) and isinstance(encoder.encoder, BuiltinTextEncoder)
    assert encoder.heard(["anything"]) == ["penguin"]


@pytest.mark.skipif(not Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf").is_file(), reason="font")
def test_the_emoji_vocabulary_maps_aliases_and_keywords_to_names():
    from noisecraft.model.vocabulary import dataset_vocabulary

    captions, phrases = dataset_vocabulary("emoji")
    assert len(captions) == len(set(captions)) > 1800 and "watermelon" in captions
    assert captions[phrases["cop"]] == "police officer"
    assert all(p not in captions for p in phrases)
    with pytest.raises(ValueError, match="only emoji"):
        dataset_vocabulary("shapes")


def test_shipping_a_model_with_a_vocabulary_says_so_on_its_card(tmp_path):
    import json

    model = make_tiny_pipeline().save(tmp_path / "run" / "model")
    training = {"step": 10, "images_seen": 640, "train_seconds": 60.0,
                "config": {"data": {"name": "emoji"}, "text": {"kind": "builtin"}}}  # fmt: skip
    (model / "training.json").write_text(json.dumps(training))
    captions = tmp_path / "names.txt"
    captions.write_text("\n".join(CAPTIONS) + "\ncop\talarm clock\n")
    with_vocabulary = tmp_path / "run-vocabulary" / "model"
    assert main(["vocabulary", str(model), str(with_vocabulary), "--captions", str(captions)]) == 0
    dest = tmp_path / "shipped"
    args = ["--name", "tiny", "--recipe", "configs/emoji32.toml", "--dest", str(dest)]
    assert main(["ship", str(with_vocabulary), *args]) == 0
    card = (dest / "MODEL_CARD.md").read_text()
    assert "nearest of 4 training captions, matched among them and 1 other phrasings" in card
    assert "noisecraft vocabulary runs/tiny/model runs/tiny-vocabulary/model --captions names.txt" in card
    assert "noisecraft eval runs/tiny-vocabulary/model" in card
    assert Pipeline.load(dest).heard(["cop"]) == [("alarm clock", 1.0)]


def test_the_native_api_says_what_a_prompt_was_heard_as():
    import httpx
    from server_helpers import serve, sse_events

    from noisecraft.server.app import create_app
    from noisecraft.server.limits import Limits
    from noisecraft.server.models import ModelRegistry

    plain = make_tiny_pipeline()
    pipe = Pipeline(
        plain.net, VocabularyTextEncoder.build(plain.text_encoder, CAPTIONS, PHRASES), plain.config
    )
    with (
        serve(create_app(ModelRegistry({"tiny": pipe}), Limits())) as url,
        httpx.Client(base_url=url) as client,
    ):
        body = {"prompt": "bactrian camel", "steps": 2, "seed": 1}
        with client.stream("POST", "/v1/generate", json=body, timeout=30) as response:
            done = list(sse_events(response.iter_lines()))[-1][1]
    assert done["heard"] == ["two-hump camel"]


def test_a_vocabulary_steps_aside_while_an_adapter_is_merged(tmp_path):
    from test_lora import random_adapter

    plain = make_tiny_pipeline()
    pipe = Pipeline(
        plain.net, VocabularyTextEncoder.build(plain.text_encoder, CAPTIONS, PHRASES), plain.config
    )
    assert pipe.heard(["bactrian camel"]) == [("two-hump camel", 1.0)]
    pipe.add_lora(random_adapter(pipe.net, tmp_path / "style.safetensors"), 0.5)
    assert pipe.heard(["bactrian camel"]) == [("bactrian camel", 1.0)]  # an adapter's captions, as typed
    with torch.no_grad():
        assert torch.equal(pipe.encode(["bactrian camel"]).tokens, plain.encode(["bactrian camel"]).tokens)
    pipe.clear_loras()
    assert (
        pipe.prompt_encoder is pipe.text_encoder and pipe.heard(["bactrian camel"])[0][0] == "two-hump camel"
    )
    assert pipe.heard(["bactrian camel <lora:style:1>"]) == [("bactrian camel <lora:style:1>", 1.0)]


def test_a_model_whose_last_run_trained_its_text_alone_can_be_distilled():
    """The shipped emoji's last runs froze its network (a text adapter): its student's network trains."""
    from noisecraft.model import find_model
    from noisecraft.training.distill import distill_config

    recorded = json.loads((find_model("emoji") / "training.json").read_text())["config"]
    assert recorded["model"]["frozen_net"] is True
    config = distill_config("emoji", None, ["steps=2"])
    assert config.model.frozen_net is False and config.model.init == "emoji"
