"""Captions for an emoji the way people type them, drawn as a pure function of (seed, epoch, item).

Where the words come from:
- the ``emoji`` package (BSD-3-Clause): each emoji's name and its aliases (``EmojiEntry``);
- Unicode CLDR 41 English annotations (Unicode License, ``emoji_cldr_en.LICENSE``): the short name
  ("tts") and keywords of each emoji, extracted once into ``emoji_cldr_en.json`` by
  ``python -m noisecraft.data.emoji_captions DIR`` (DIR: CLDR's ``common`` folder, e.g. Debian's
  ``unicode-cldr-core`` at /usr/share/unicode/cldr/common). A keyword that belongs to one emoji only
  ("watermelon") is another name for it; a shared one ("fruit") only ever comes after a name
  ("watermelon, fruit").

A caption is ``template(article + modifier + core)``: the core is a name (flags also as "Japan
flag"), maybe followed by a keyword; the modifier, in some draws, is the emoji's own colour read from
its picture ("a red apple", ``colour_name``) or a common adjective ("a cute penguin", ``ADJECTIVES``);
the article is none, "a"/"an" or "the"; the template is the bare phrase or one of ``TEMPLATES`` ("a
picture of …", "… emoji", "… icon"). One draw in five is the bare main name, so the exact names stay
as common as the other phrasings together per name.
"""

from __future__ import annotations

import itertools
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch

from .common import item_generator

CLDR_FILE = Path(__file__).with_name("emoji_cldr_en.json")
PARAPHRASE_FILE = Path(__file__).with_name("emoji_paraphrases.tsv")  # held out: never a training caption
SECOND_PARAPHRASE_FILE = Path(__file__).with_name("emoji_paraphrases_2.tsv")  # other emoji, written later
THIRD_PARAPHRASE_FILE = Path(__file__).with_name("emoji_paraphrases_3.tsv")  # 100 more, written later still
TEMPLATES = (
    "{}", "{}", "{}", "a picture of {}", "an emoji of {}", "an image of {}", "a drawing of {}",
    "an illustration of {}", "a cartoon of {}", "an icon of {}", "{} emoji", "{} icon", "{} symbol",
    "{} clipart", "emoji of {}", "{} picture",
)  # fmt: skip  # the bare phrase three times in sixteen
ARTICLES = ("", "", "a", "a", "the")  # "a" becomes "an" before a vowel; none for plurals
ADJECTIVES = (
    "little", "small", "big", "large", "tiny", "cute", "simple", "nice", "pretty", "shiny", "classic",
    "cartoon", "cool", "old",
)  # fmt: skip  # words people put before any thing; colours come from the picture instead
BARE_NAME = 0.2  # share of draws that are the main name exactly
WITH_KEYWORD = 0.15  # share of the other draws whose core is followed by a shared keyword
MODIFIED = 0.4  # share of the other draws with a word before the core: its colour or an adjective
WITH_COLOUR = 0.5  # share of those (of an emoji with a colour) where the word is its colour
SALT = 0x0E1A  # the caption's draws apart from any other draw of the same item


def _plain(text: str) -> str:
    return text.replace("’", "'").replace("“", '"').replace("”", '"').strip()


def _key(char: str) -> str:
    return char.replace("\ufe0f", "")  # CLDR keys drop the emoji presentation selector


COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "grey")
COLOUR_SHARE = 0.45  # a colour names the emoji when this share of its inked pixels has it
_HUE_EDGES = torch.tensor([20.0, 38.0, 68.0, 165.0, 255.0, 305.0, 340.0])  # where one hue name ends
_COLOUR_BINS = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])  # red, orange, yellow, green, blue, purple, pink, red


def colour_name(image: torch.Tensor) -> str:
    """The colour most of an emoji's ink has ("red", "yellow", "brown", …), or "" when none has
    ``COLOUR_SHARE`` of it; ``image`` [3, H, W] in [-1, 1] on white."""
    rgb = ((image.clamp(-1, 1) + 1) / 2).flatten(1)  # [3, H*W] in [0, 1]
    rgb = rgb[:, (1 - rgb).abs().amax(0) > 0.12]  # the ink: pixels away from the white background
    if rgb.shape[1] == 0:
        return ""
    value, low = rgb.amax(0), rgb.amin(0)
    saturation = (value - low) / value.clamp_min(1e-6)
    hue = _hue_degrees(rgb, value, low)
    names = _COLOUR_BINS[torch.bucketize(hue, _HUE_EDGES, right=True)]  # [N] indices into COLOURS
    warm = names <= 1  # red or orange hues: dark ones are brown, pale bright ones pink
    names = torch.where(warm & (value < 0.76), torch.tensor(COLOURS.index("brown")), names)
    names = torch.where(warm & (saturation < 0.4) & (value > 0.9), torch.tensor(COLOURS.index("pink")), names)
    grey = torch.where(value > 0.85, COLOURS.index("white"), COLOURS.index("grey"))  # white ink: pale shading
    names = torch.where(saturation < 0.2, grey, names)
    names = torch.where(value < 0.33, torch.tensor(COLOURS.index("black")), names)
    counts = torch.bincount(names, minlength=len(COLOURS))
    best = int(counts.argmax())
    return COLOURS[best] if counts[best] >= COLOUR_SHARE * len(names) else ""


def _hue_degrees(rgb: torch.Tensor, value: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """HSV hue in [0, 360) of each column of ``rgb`` [3, N]."""
    r, g, b = rgb
    span = (value - low).clamp_min(1e-6)
    not_red = torch.where(value == g, 2 + (b - r) / span, 4 + (r - g) / span)
    hue = torch.where(value == r, (g - b) / span, not_red)
    return (hue * 60) % 360


@lru_cache(maxsize=1)
def cldr_annotations() -> dict[str, dict]:
    """Emoji (without U+FE0F) → {"tts": short name, "keywords": [...]}, from the packaged extract."""
    return json.loads(CLDR_FILE.read_text(encoding="utf-8"))


def extract_cldr(common: str | Path, chars: list[str]) -> dict[str, dict]:
    """Short name and keywords of each of ``chars`` from CLDR's ``annotations{,Derived}/en.xml``."""
    wanted, out = {_key(c) for c in chars}, {}
    for part in ("annotations", "annotationsDerived"):
        for node in ET.parse(Path(common) / part / "en.xml").getroot().iter("annotation"):
            cp = node.get("cp")
            if cp not in wanted or not node.text:
                continue
            entry = out.setdefault(cp, {"tts": "", "keywords": []})
            if node.get("type") == "tts":
                entry["tts"] = _plain(node.text)
            else:
                entry["keywords"] = [_plain(k) for k in node.text.split("|") if k.strip()]
    return dict(sorted(out.items()))


def _flag_forms(name: str) -> list[str]:
    """'flag of Japan' → also 'Japan flag' (the word order people use)."""
    return [name, f"{name.removeprefix('flag of ')} flag"] if name.startswith("flag of ") else [name]


class EmojiCaptioner:
    """Names, keywords and phrasings of a list of emoji; ``caption(i, seed, epoch)`` draws one."""

    def __init__(
        self,
        entries: list,
        annotations: dict[str, dict] | None = None,
        colour_of: Callable[[int], str] | None = None,
    ):
        annotations = cldr_annotations() if annotations is None else annotations
        self.colour_of = lru_cache(maxsize=None)(colour_of or (lambda index: ""))  # index → colour word
        notes = [annotations.get(_key(e.char), {"tts": "", "keywords": []}) for e in entries]
        counts = Counter(k.lower() for n in notes for k in set(n["keywords"]))
        self.main = [e.name for e in entries]
        self.names, self.keywords = [], []
        for entry, note in zip(entries, notes):
            names = list(dict.fromkeys([entry.name, *entry.variants]))
            seen = {n.lower() for n in names} | {n.lower().removeprefix("flag of ") for n in names}
            extra = [note["tts"]] + [k for k in note["keywords"] if counts[k.lower()] == 1]
            names += [t for t in dict.fromkeys(extra) if t and t.lower() not in seen]
            self.names.append(names)
            self.keywords.append([k for k in note["keywords"] if counts[k.lower()] > 1])

    def cores(self, index: int) -> list[str]:
        """Every phrase an article and a template wrap: names, flag word orders, 'name, keyword'."""
        plain = [form for name in self.names[index] for form in _flag_forms(name)]
        keywords = self.keywords[index]
        return plain + [f"{p}, {k}" for p in plain for k in keywords if k.lower() not in p.lower()]

    def modifiers(self, index: int, core: str) -> list[str]:
        """Words that may come before ``core``: the emoji's colour, then ``ADJECTIVES`` (none before a
        flag, nor a word the core has)."""
        if _FLAG_WORD.search(core):
            return []
        colour = self.colour_of(index)
        words = core.lower().split()
        return [m for m in ((colour,) if colour else ()) + ADJECTIVES if m not in words]

    def caption(self, index: int, seed: int, epoch: int) -> str:
        """Emoji ``index``'s caption in ``epoch``: a pure function of (seed, epoch, index)."""
        g = item_generator(seed, index, epoch * 65_537 + SALT)
        u = torch.rand(10, generator=g).tolist()
        if u[0] < BARE_NAME:
            return self.main[index]
        names = self.names[index]
        forms = _flag_forms(names[int(u[1] * len(names))])
        core = forms[int(u[2] * len(forms))]
        keywords = [k for k in self.keywords[index] if k.lower() not in core.lower()]
        if keywords and u[3] < WITH_KEYWORD:
            core = f"{core}, {keywords[int(u[4] * len(keywords))]}"
        core = self._modified(index, core, u[7:])
        article = ARTICLES[int(u[5] * len(ARTICLES))]
        return TEMPLATES[int(u[6] * len(TEMPLATES))].format(with_article(article, core))

    def _modified(self, index: int, core: str, u: list[float]) -> str:
        """``core``, or in a share ``MODIFIED`` of draws a modifier and ``core`` (u: three uniforms)."""
        words = self.modifiers(index, core)
        if not words or u[0] >= MODIFIED:
            return core
        colour = self.colour_of(index)
        if colour and words[0] == colour and u[1] < WITH_COLOUR:
            return f"{colour} {core}"
        adjectives = words[1:] if colour and words[0] == colour else words
        return f"{adjectives[int(u[2] * len(adjectives))]} {core}"

    def all_captions(self, index: int) -> set[str]:
        """Every caption ``caption`` can draw for emoji ``index``."""
        cores = self.cores(index)
        cores += [f"{m} {c}" for c in cores for m in self.modifiers(index, c)]
        phrases = {with_article(a, c) for a, c in itertools.product(set(ARTICLES), cores)}
        return {t.format(p) for t, p in itertools.product(set(TEMPLATES), phrases)} | {self.main[index]}


def vocabulary(entries: list) -> tuple[list[str], dict[str, int]]:
    """The emoji's main names (what the network trained on) and every other phrase a caption is built
    around (aliases, CLDR short names and keywords, "name, keyword") → the index of the name it means,
    for ``text.VocabularyTextEncoder``; a phrase two emoji share means the first."""
    captioner = EmojiCaptioner(entries)
    names, phrases = set(captioner.main), {}
    for index in range(len(entries)):
        for core in captioner.cores(index):
            if core not in names:
                phrases.setdefault(core, index)
    return captioner.main, phrases


def paraphrases(entries: list, path: str | Path = PARAPHRASE_FILE) -> tuple[list[str], list[int]]:
    """The held-out prompts and the index in ``entries`` of the emoji each means (prompts whose emoji
    the font cannot draw are left out)."""
    index = {_key(e.char): i for i, e in enumerate(entries)}
    prompts, targets = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            prompt, char = line.split("\t")
            if _key(char) in index:
                prompts.append(prompt)
                targets.append(index[_key(char)])
    return prompts, targets


_FLAG_WORD = re.compile(r"\bflags?\b", re.IGNORECASE)
_PLURAL = re.compile(r"(?<![su])s$")  # "two hearts", "sparkles"; not "glass", "cactus"


def with_article(article: str, phrase: str) -> str:
    """'a' + 'apple' → 'an apple'; no indefinite article before a plural-looking head word."""
    head = re.split(r",| with | of ", phrase)[0]  # "face with tears of joy" → "face"
    if article != "a":
        return f"{article} {phrase}".strip()
    if _PLURAL.search(head) or head[:1].isdigit():
        return phrase
    return f"{'an' if head[:1].lower() in 'aeiou' else 'a'} {phrase}"


def main() -> None:
    """Write ``emoji_cldr_en.json`` from a CLDR ``common`` folder, for the emoji package's emoji."""
    import sys

    import emoji as emoji_package

    from .emoji import SKIN_TONES

    chars = [c for c in emoji_package.EMOJI_DATA if not set(c) & SKIN_TONES]
    data = extract_cldr(sys.argv[1], chars)
    lines = [json.dumps({c: v}, ensure_ascii=False)[1:-1] for c, v in data.items()]
    CLDR_FILE.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")  # one emoji a line
    print(f"{len(data)} emoji annotated → {CLDR_FILE}")


if __name__ == "__main__":
    main()
