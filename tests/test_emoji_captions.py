"""Emoji captions people type (names, aliases, CLDR words, templates) and the held-out paraphrases."""

from __future__ import annotations

import pytest
import torch

from noisecraft.data.emoji import EmojiEntry, _entry
from noisecraft.data.emoji_captions import EmojiCaptioner, cldr_annotations, paraphrases, with_article
from noisecraft.evaluation import evaluate as evaluate_module

FAKE_CLDR = {
    "🍉": {"tts": "watermelon", "keywords": ["fruit", "watermelon"]},
    "🍎": {"tts": "red apple", "keywords": ["apple", "fruit", "red"]},
    "⏰": {"tts": "alarm clock", "keywords": ["alarm", "clock"]},
    "🕐": {"tts": "one o'clock", "keywords": ["clock", "one"]},
}
ENTRIES = [
    EmojiEntry("🍉", "watermelon", ()),
    EmojiEntry("🍎", "red apple", ()),
    EmojiEntry("⏰", "alarm clock", ()),
    EmojiEntry("🕐", "one o'clock", ("clock1",)),
    EmojiEntry("🇯🇵", "flag of Japan", ("jp",)),
]


def all_package_entries() -> list[EmojiEntry]:
    """Every fully-qualified emoji of the emoji package, drawable or not: a superset of the dataset's."""
    import emoji as emoji_package

    data = emoji_package.EMOJI_DATA.items()
    return [_entry(c, d) for c, d in data if d["status"] == emoji_package.STATUS["fully_qualified"]]


def test_unique_keywords_are_names_and_shared_ones_follow_a_name():
    captioner = EmojiCaptioner(ENTRIES, FAKE_CLDR)
    assert captioner.names[2] == ["alarm clock", "alarm"]  # "alarm" is this emoji's alone
    assert captioner.keywords[2] == ["clock"] and captioner.keywords[0] == ["fruit"]
    assert captioner.names[1] == ["red apple", "apple", "red"]  # in this list "red" is the apple's alone
    assert "fruit" not in captioner.cores(0) and "watermelon, fruit" in captioner.cores(0)
    assert "Japan flag" in captioner.cores(4) and "flag of Japan" in captioner.cores(4)


def test_caption_is_a_pure_function_of_seed_epoch_and_item():
    captioner = EmojiCaptioner(ENTRIES, FAKE_CLDR)
    drawn = [[captioner.caption(i, 7, epoch) for epoch in range(60)] for i in range(len(ENTRIES))]
    again = EmojiCaptioner(ENTRIES, FAKE_CLDR)
    assert drawn == [[again.caption(i, 7, epoch) for epoch in range(60)] for i in range(len(ENTRIES))]
    assert drawn[2] != [captioner.caption(2, 8, epoch) for epoch in range(60)]  # the seed matters
    for i, captions in enumerate(drawn):
        assert set(captions) <= captioner.all_captions(i)
        assert len(set(captions)) > 15  # many phrasings over the epochs
        assert 3 <= captions.count(ENTRIES[i].name) <= 30  # the bare name ≈ 1 draw in 5 (+ bare templates)
    assert any(c.startswith("a picture of ") for c in drawn[0]) and any(c.endswith(" icon") for c in drawn[0])


def test_articles_follow_the_first_word():
    assert with_article("a", "apple") == "an apple" and with_article("a", "red apple") == "a red apple"
    assert with_article("a", "two hearts") == "two hearts"  # no "a" before a plural
    assert with_article("a", "face with tears of joy") == "a face with tears of joy"
    assert with_article("the", "sun") == "the sun" and with_article("", "sun") == "sun"


def test_packaged_cldr_words_cover_the_common_emoji():
    annotations = cldr_annotations()
    assert len(annotations) > 1800
    assert annotations["🐧"] == {"tts": "penguin", "keywords": ["bird", "penguin"]}
    assert all("\ufe0f" not in char for char in annotations)  # keys as CLDR writes them


def test_no_held_out_paraphrase_is_a_training_caption():
    entries = all_package_entries()
    prompts, targets = paraphrases(entries)
    assert len(prompts) >= 100 and len(set(prompts)) == len(prompts)
    assert entries[targets[prompts.index("a slice of watermelon")]].char == "🍉"
    captioner = EmojiCaptioner(entries)
    words = {p: set(p.split()) for p in prompts}
    for i, names in enumerate(captioner.names):  # only emoji sharing a word with a prompt can collide
        name_words = {w for n in names for w in n.lower().split()}
        near = [p for p in prompts if words[p] & name_words]
        if near:
            assert not set(near) & captioner.all_captions(i), captioner.main[i]


def test_eval_scores_paraphrases_by_retrieval(monkeypatch):
    entries = [EmojiEntry("🍉", "watermelon", ()), EmojiEntry("🐧", "penguin", ()), EmojiEntry("😀", "x", ())]
    gallery = torch.eye(3).repeat_interleave(4, 1).reshape(3, 3, 2, 2)  # three distinct "pictures"
    methods = {"entries": entries, "__len__": lambda s: 3, "__getitem__": lambda s, i: (gallery[i], "")}
    data = type("Data", (), methods)()
    prompts, targets = paraphrases(entries)
    assert sorted(targets) == [0, 1] and "a cute penguin" in prompts
    wrong = {"a cute penguin": 2}  # one paraphrase drawn as the wrong emoji

    def fake_generate(pipeline, prompts, **options):
        return torch.stack([gallery[wrong.get(p, targets[i])] for i, p in enumerate(prompts)])

    monkeypatch.setattr(evaluate_module, "generate_images", fake_generate)
    named = gallery[[0, 1]]
    out = evaluate_module._emoji_retrieval(None, data, [0, 1], named, 0, False)
    assert out["retrieval_top1"] == 1.0 and out["paraphrase_num"] == 2
    assert out["paraphrase_top1"] == pytest.approx(0.5) and out["paraphrase_top5"] == 1.0  # 3 in the gallery
