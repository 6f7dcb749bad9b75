"""CLIP's BPE tokenizer against transformers' CLIPTokenizer built from the same vocabulary file.

Where the two differ, ours follows OpenAI's/OpenCLIP's ``SimpleTokenizer`` (Python cleanup), and
transformers' tokenizers-backed one (what diffusers uses) does not; measured over every code point:

- HTML entities: we unescape them twice (``&amp;`` → ``&``), transformers keeps them as written;
- U+001C..U+001F: Python's ``str.split`` counts them as whitespace, transformers' ``\\s`` does not;
- capital sigma at a word's end: Python's ``lower`` gives final ``ς``, tokenizers' ``Lowercase`` ``σ``;
- U+0345 (combining ypogegrammeni): with CLIP's IGNORECASE flag the ``regex`` package matches it as
  ``\\p{L}`` (it case-folds to ι), tokenizers does not;
- '!' with diffusers' SD2/SDXL tokenizers (pad token '!'): see ``test_open_clip_padding``;
- code points unassigned in Python 3.11's Unicode 14 but assigned since: the ``regex`` package and
  tokenizers carry different Unicode versions, so letter classes and lower-casing disagree.

The generated prompts avoid those characters; ``test_documented_differences`` pins each one.
"""

from __future__ import annotations

import json
import random
import sys
import unicodedata
from pathlib import Path

import pytest
import torch

from noisecraft.text.clip_tokenizer import CLIPTokenizer, clip_vocab, open_clip_vocab_path, read_merges

WORDS = (
    "a photo of the cat dog astronaut riding horse on moon portrait painting oil canvas highly detailed "
    "sharp focus trending artstation landscape mountains sunset golden hour cinematic lighting 8k 4K "
    "Van Gogh Picasso DSLR bokeh macro watercolor cyberpunk city neon rain reflections Greg Rutkowski "
    "it's don't we'll they're I'm you've he'd rock'n'roll x-ray e-mail 1990s 3.14 1234 2024 42 "
    "café naïve crème brûlée Zürich façade jalapeño Ελλάδα пейзаж 東京 山 نجمة नमस्ते 한국어 "
    "🍉 🚀 👩‍🚀 👍🏽 🇯🇵 ❤️ ✨ masterpiece (best quality:1.2) [blurry] {ugly} --ar 16:9 #art @user "
    "\"quoted\" 'single' ... !! ?! , . ; : / \\ | ~ * ^ % $ + = < > _ ` cafe\u0301 ÉCOLE ÄÖÜ ÑANDÚ"
).split(" ")
SEPARATORS = [" ", " ", " ", ", ", "  ", "\t", "\n", ""]
EDGE_CASES = ["", " ", "   \t\n  ", "a", "A", "!", "'s", "a photo of a cat", "A PHOTO OF A CAT", "x" * 300]


def make_prompts(n: int = 300, seed: int = 0) -> list[str]:
    """Random prompts from WORDS joined by mixed separators; every tenth one far over 77 tokens."""
    rng = random.Random(seed)
    prompts = list(EDGE_CASES)
    for i in range(n):
        count = rng.randint(60, 120) if i % 10 == 0 else rng.randint(1, 25)
        words = [rng.choice(WORDS) for _ in range(count)]
        text = words[0] + "".join(rng.choice(SEPARATORS) + w for w in words[1:])
        prompts.append(rng.choice(["", " ", "  "]) + text + rng.choice(["", " ", "\n"]))
    return prompts


def write_reference_files(folder: Path) -> Path:
    """vocab.json ({token: id} in CLIP's order) and merges.txt ('#version' header), from the .gz file."""
    merges = read_merges(open_clip_vocab_path())
    vocab = {token: i for i, token in enumerate(clip_vocab(merges))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = ["#version: 0.2", *(" ".join(m) for m in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def reference_tokenizer(folder: Path, pad_token: str = "<|endoftext|>"):
    """transformers' CLIPTokenizer from those files (pad '!' = id 0 for SD2/OpenCLIP), offline."""
    from transformers import CLIPTokenizer as HFCLIPTokenizer

    return HFCLIPTokenizer.from_pretrained(
        folder, local_files_only=True, model_max_length=77, pad_token=pad_token
    )


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory) -> Path:
    return write_reference_files(tmp_path_factory.mktemp("clip_vocab"))


@pytest.fixture(scope="module")
def ours() -> CLIPTokenizer:
    return CLIPTokenizer.from_open_clip()


def test_vocabulary_is_clips(ours: CLIPTokenizer) -> None:
    assert len(ours.vocab) == 49408 and (ours.bos_id, ours.eos_id, ours.pad_id) == (49406, 49407, 49407)
    assert ours.vocab[:3] == ["!", '"', "#"] and ours.vocab[256] == "!</w>" and ours.vocab[512] == "in"
    assert "open_clip" not in sys.modules  # the file is read as data; open_clip wants torchvision


def test_known_ids(ours: CLIPTokenizer) -> None:
    ids, mask = ours(["a photo of a cat"])
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (ids[0, 7:] == 49407).all() and mask[0].sum() == 7 and ids.shape == (1, 77)
    assert ours.encode("It's a  CAFÉ!") == ours.encode("it's a café !")
    assert ours.decode(ours.encode("A photo of a café 🍉")) == "a photo of a café 🍉"


def test_matches_transformers(ours: CLIPTokenizer, reference_dir: Path) -> None:
    reference = reference_tokenizer(reference_dir)
    prompts = make_prompts()
    for prompt in prompts:  # untruncated, without BOS/EOS
        assert ours.encode(prompt) == reference(prompt)["input_ids"][1:-1], repr(prompt)
    expected = reference(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with pytest.warns(UserWarning, match="truncated"):
        ids, mask = ours(prompts)
    assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"].bool())
    lengths = mask.sum(1)
    assert lengths.max() == 77 and lengths.min() == 2  # some truncated (EOS kept last), some empty
    assert (ids[torch.arange(len(prompts)), lengths - 1] == 49407).all()


@pytest.mark.filterwarnings("ignore:.*were truncated")
def test_open_clip_padding(reference_dir: Path) -> None:
    """pad_id 0 (OpenCLIP, SD2, SDXL's second encoder) changes the padding only. diffusers' SD2/SDXL
    tokenizer pads with the special token '!' (id 0) and so also reads every '!' in a prompt as id 0
    (diffusers issue #4153); OpenCLIP and we keep BPE's '!</w>' (256), '!!</w>' (748)."""
    prompts = [p for p in make_prompts(60, seed=1) if "!" not in p]
    eos_padded, mask = CLIPTokenizer.from_open_clip()(prompts)
    zero_padded, mask0 = CLIPTokenizer.from_open_clip(pad_id=0)(prompts)
    assert torch.equal(mask, mask0) and torch.equal(zero_padded, torch.where(mask, eos_padded, 0))
    reference = reference_tokenizer(reference_dir, pad_token="!")
    expected = reference(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert torch.equal(zero_padded, expected["input_ids"])
    assert CLIPTokenizer.from_open_clip(pad_id=0).encode("wow !!") == [2781, 748]
    assert reference("wow !!")["input_ids"][1:-1] == [2781, 0, 0]


def test_documented_differences(ours: CLIPTokenizer, reference_dir: Path) -> None:
    reference = reference_tokenizer(reference_dir)

    def theirs(text: str) -> list[int]:
        return reference(text)["input_ids"][1:-1]

    assert ours.encode("salt &amp;amp; pepper") == ours.encode("salt & pepper") != theirs("salt &amp; pepper")
    assert ours.encode("a\x1cb") == ours.encode("a b") != theirs("a\x1cb")
    assert ours.encode("ΟΔΟΣ") == ours.encode("οδος") != theirs("ΟΔΟΣ")  # final ς
    assert ours.encode("a\u0345b") != theirs("a\u0345b")  # one word here, three there
    assert unicodedata.category("\U0003ef59") == "Cn"  # unassigned in Unicode 14 (Python 3.11)
    assert ours.encode("ə\U0003ef59t") != theirs("ə\U0003ef59t")  # newer regex Unicode: one word


def test_rejects_bad_input(ours: CLIPTokenizer) -> None:
    with pytest.raises(ValueError, match="single string"):
        ours("a cat")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_length"):
        ours(["a cat"], max_length=1)
