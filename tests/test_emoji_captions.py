"""Emoji captions people type (names, aliases, CLDR words, templates) and the held-out paraphrases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from noisecraft.data.emoji import DEFAULT_FONT, EmojiDataset, EmojiEntry, _entry
from noisecraft.data.emoji_captions import (
    ADJECTIVES,
    SECOND_PARAPHRASE_FILE,
    THIRD_PARAPHRASE_FILE,
    EmojiCaptioner,
    cldr_annotations,
    colour_name,
    paraphrases,
    with_article,
)
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


def assert_held_out(captioner: EmojiCaptioner, prompts: list[str]) -> None:
    """No prompt is a caption ``captioner`` can draw for any emoji."""
    words = {p: set(p.split()) for p in prompts}
    for i, names in enumerate(captioner.names):  # only emoji sharing a word with a prompt can collide
        name_words = {w for n in names for w in n.lower().split()}
        near = [p for p in prompts if words[p] & name_words]
        if near:
            assert not set(near) & captioner.all_captions(i), captioner.main[i]


def test_no_held_out_paraphrase_is_a_training_caption():
    entries = all_package_entries()
    prompts, targets = paraphrases(entries)
    assert len(prompts) >= 100 and len(set(prompts)) == len(prompts)
    assert entries[targets[prompts.index("a slice of watermelon")]].char == "🍉"
    assert_held_out(EmojiCaptioner(entries), prompts)


@pytest.mark.skipif(not Path(DEFAULT_FONT).is_file(), reason="needs fonts-noto-color-emoji")
def test_no_held_out_paraphrase_is_a_training_caption_with_the_pictures_colours():
    data = EmojiDataset(32, phrasing="typed")
    prompts, first_meant = paraphrases(data.entries)
    second, meant = paraphrases(data.entries, SECOND_PARAPHRASE_FILE)
    third, third_meant = paraphrases(data.entries, THIRD_PARAPHRASE_FILE)
    assert len(second) == 100 and not set(meant) & set(first_meant)  # other emoji than the first set's
    assert len(third) == len(set(third_meant)) == 100  # 100 emoji, none the first two sets name
    assert not set(third_meant) & (set(meant) | set(first_meant))
    assert "a red party balloon" in prompts and "a red balloon" in data.captioner.all_captions(
        [e.name for e in data.entries].index("balloon")
    )  # the colour comes from the picture, so only the dataset's captioner can draw it
    assert_held_out(data.captioner, prompts + second + third)


def test_eval_scores_paraphrases_by_retrieval(monkeypatch):
    entries = [EmojiEntry("🍉", "watermelon", ()), EmojiEntry("🐧", "penguin", ()), EmojiEntry("😀", "x", ())]
    entries.append(EmojiEntry("🐨", "koala", ()))  # in the second set; 😀 is in the third
    gallery = torch.eye(4).repeat_interleave(3, 1).reshape(4, 3, 2, 2)  # four distinct "pictures"
    methods = {"entries": entries, "__len__": lambda s: 4, "__getitem__": lambda s, i: (gallery[i], "")}
    data = type("Data", (), methods)()
    prompts, targets = paraphrases(entries)
    assert sorted(targets) == [0, 1] and "a cute baby penguin" in prompts
    assert paraphrases(entries, SECOND_PARAPHRASE_FILE) == (["a koala bear"], [3])
    assert paraphrases(entries, THIRD_PARAPHRASE_FILE) == (["a smiling face with a big grin"], [2])
    wrong = {"a cute baby penguin": 2, "a koala bear": 0}  # drawn as the wrong emoji

    def fake_generate(pipeline, prompts, **options):
        meant = {p: t for p, t in zip(*paraphrases(entries))} | {"a koala bear": 3}
        meant |= {"a smiling face with a big grin": 2}
        return torch.stack([gallery[wrong.get(p, meant[p])] for p in prompts])

    monkeypatch.setattr(evaluate_module, "generate_images", fake_generate)
    named = gallery[[0, 1]]
    out = evaluate_module._emoji_retrieval(None, data, [0, 1], named, 0, False)
    assert out["retrieval_top1"] == 1.0 and out["paraphrase_num"] == 2
    assert out["paraphrase_top1"] == pytest.approx(0.5) and out["paraphrase_top5"] == 1.0  # 4 in the gallery
    assert out["paraphrase2_num"] == 1 and out["paraphrase2_top1"] == 0.0 and out["paraphrase2_top5"] == 1.0
    assert out["paraphrase3_num"] == 1 and out["paraphrase3_top1"] == 1.0


def painted(rgb: tuple[float, float, float], share: float = 0.5) -> torch.Tensor:
    """A white 32×32 picture whose top ``share`` of rows is ``rgb`` (in [0, 1]), as [3, 32, 32] in [-1, 1]."""
    image = torch.ones(3, 32, 32)
    image[:, : int(32 * share)] = torch.tensor(rgb).view(3, 1, 1)
    return image * 2 - 1


@pytest.mark.parametrize(
    "rgb, name",
    [
        ((0.95, 0.1, 0.1), "red"), ((1.0, 0.6, 0.0), "orange"), ((1.0, 0.85, 0.2), "yellow"),
        ((0.2, 0.7, 0.2), "green"), ((0.1, 0.3, 0.9), "blue"), ((0.5, 0.2, 0.74), "purple"),
        ((0.95, 0.4, 0.7), "pink"), ((1.0, 0.8, 0.7), "pink"), ((0.55, 0.3, 0.1), "brown"),
        ((0.1, 0.1, 0.1), "black"), ((0.5, 0.5, 0.52), "grey"), ((0.87, 0.87, 0.87), "white"),
    ],
)  # fmt: skip
def test_colour_name_reads_the_ink_not_the_background(rgb, name):
    assert colour_name(painted(rgb, share=0.25)) == name  # a quarter of the picture, all of its ink


def test_colour_name_needs_one_colour_to_dominate():
    assert colour_name(torch.ones(3, 32, 32)) == ""  # no ink at all
    red, blue, green = (
        torch.tensor(c).view(3, 1, 1) * 2 - 1 for c in ((0.95, 0.1, 0.1), (0.1, 0.3, 0.9), (0.2, 0.7, 0.2))
    )
    image = torch.ones(3, 32, 32)
    image[:, :6], image[:, 6:11], image[:, 11:16] = red, blue, green  # 38 % red: no colour dominates
    assert colour_name(image) == ""
    image[:, :12] = red  # 75 % red
    assert colour_name(image) == "red"


def test_modifiers_come_from_the_picture_and_the_adjectives():
    colours = {0: "green", 1: "red"}
    captioner = EmojiCaptioner(ENTRIES, FAKE_CLDR, colour_of=lambda i: colours.get(i, ""))
    drawn = [captioner.caption(0, 3, epoch) for epoch in range(300)]
    assert sum("green watermelon" in c for c in drawn) > 10  # the colour, in about one draw in six
    assert any(f"{a} watermelon" in c for c in drawn for a in ADJECTIVES)
    assert all(c in captioner.all_captions(0) for c in drawn)
    assert "red red apple" not in captioner.all_captions(1) and "a red apple" in captioner.all_captions(1)
    assert captioner.modifiers(4, "flag of Japan") == [] and captioner.modifiers(4, "Japan flag") == []
    assert not any("green" in c for i in (2, 3) for c in captioner.all_captions(i))  # no colour, none named
