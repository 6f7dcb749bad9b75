"""The colour emoji of Noto Color Emoji, rendered with Pillow, captioned with their names.

Which emoji: every fully-qualified entry of the ``emoji`` package's table that the installed font
draws as one glyph, minus skin-tone variants (they repeat a picture in another colour), components
(skin tones and hair pieces on their own) and lone regional-indicator letters. Country flags
(pairs of regional indicators) stay: they are named pictures like any other. With Debian's
fonts-noto-color-emoji 2.042 (Emoji 15.1) and emoji 2.16 that is 1,899 emoji.

Rendering: the font is a bitmap font with one strike, so it is drawn at size 109 (a 136×128 glyph),
composited on white and downsampled to the requested size.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import PIL
import torch
from PIL import Image, ImageDraw, ImageFont, features
from torch.utils.data import Dataset

from .common import item_generator, to_tensor
from .emoji_captions import EmojiCaptioner, colour_name

DEFAULT_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
FONT_SIZE = 109  # the only size the font's bitmap strike supports
CANVAS = 136  # the glyph advance at size 109; glyphs are 136 wide, 128 tall
INSTALL_HINT = (
    "install it with `sudo apt-get install fonts-noto-color-emoji` (Debian/Ubuntu), or pass "
    "font_path= pointing at NotoColorEmoji.ttf"
)
SKIN_TONES = {chr(c) for c in range(0x1F3FB, 0x1F400)}
REGIONAL_INDICATORS = {chr(c) for c in range(0x1F1E6, 0x1F200)}
PHRASINGS = ("names", "typed")
COLOUR_SIZE = 32  # the picture colour words are read from, whatever size the dataset draws
TAG_LETTERS = {chr(c) for c in range(0xE0020, 0xE0080)}  # subdivision flags: England, Scotland, Wales


@dataclass(frozen=True)
class EmojiEntry:
    char: str  # the emoji sequence
    name: str  # main caption, e.g. "grinning face" or "flag of Japan"
    variants: tuple[str, ...]  # other names for it, e.g. "grinning"


def load_font(font_path: str | Path | None = None) -> ImageFont.FreeTypeFont:
    """Noto Color Emoji at its bitmap size; FileNotFoundError saying how to install it when missing."""
    path = Path(font_path or DEFAULT_FONT)
    if not path.is_file():
        raise FileNotFoundError(f"emoji font not found at {path}: {INSTALL_HINT}")
    # Raqm shapes multi-codepoint sequences (flags, ZWJ families) into one glyph; without it they fall apart.
    engine = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
    return ImageFont.truetype(str(path), size=FONT_SIZE, layout_engine=engine)


def _caption(name: str) -> str:
    """':thumbs_up:' -> 'thumbs up'; curly apostrophes become plain ones."""
    return name.strip(":").replace("_", " ").replace("’", "'").strip()


_SHORT_CODE = re.compile(r"[a-z][0-9]|[0-9][a-z]", re.IGNORECASE)


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _entry(char: str, data: dict) -> EmojiEntry:
    """Main caption and distinct extra names. GitHub short codes are dropped: aliases under 3 letters
    (':v:') and words gluing letters to digits (':cat2:', ':u7533:', ':clock830:')."""
    main = _caption(data["en"])
    is_flag = set(char) & (REGIONAL_INDICATORS | TAG_LETTERS)
    if is_flag:
        main = f"flag of {main}"
    seen, variants = {_key(main), _key(main.removeprefix("flag of "))}, []
    for alias in data.get("alias", []):
        text = _caption(alias)
        if len(_key(text)) >= 3 and _key(text) not in seen and not _SHORT_CODE.search(text):
            seen.add(_key(text))
            variants.append(text)
    return EmojiEntry(char, main, tuple(variants))


def _drawable(font: ImageFont.FreeTypeFont, char: str) -> bool:
    """One glyph with ink: wider layouts are sequences the font cannot join; empty ones are .notdef."""
    left, top, right, bottom = font.getbbox(char)
    return font.getlength(char) <= 1.5 * CANVAS and bottom > top


def emoji_entries(font: ImageFont.FreeTypeFont, flags: bool = True) -> list[EmojiEntry]:
    """The captioned emoji this font can draw, in the emoji package's (alphabetical) order."""
    import emoji as emoji_package

    entries = []
    for char, data in emoji_package.EMOJI_DATA.items():
        if data["status"] != emoji_package.STATUS["fully_qualified"]:  # drops components and duplicates
            continue
        if set(char) & SKIN_TONES or (len(char) == 1 and char in REGIONAL_INDICATORS):
            continue
        if not flags and set(char) & (REGIONAL_INDICATORS | TAG_LETTERS):
            continue
        if _drawable(font, char):
            entries.append(_entry(char, data))
    return entries


@lru_cache(maxsize=4096)
def render_emoji(font_path: str, char: str, size: int) -> torch.Tensor:
    """One emoji on white, [3, size, size] in [-1, 1] (cached: each is drawn once per process)."""
    glyph = Image.new("RGBA", (CANVAS, CANVAS), (255, 255, 255, 0))
    ImageDraw.Draw(glyph).text((0, (CANVAS - 128) // 2), char, font=load_font(font_path), embedded_color=True)
    white = Image.new("RGBA", glyph.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, glyph).convert("RGB")
    return to_tensor(image.resize((size, size), Image.Resampling.LANCZOS))


class EmojiDataset(Dataset):
    """Item i is (emoji i rendered [3, size, size] in [-1, 1], caption).

    With ``caption_variants`` the caption is drawn from the main name and its variants by
    (seed, index, epoch) — call ``set_epoch`` each epoch; otherwise it is always the main name.
    ``phrasing="typed"`` draws instead from the phrasings people type (``emoji_captions``: names,
    aliases, CLDR short names and keywords, colours and adjectives, articles, templates such as "a
    picture of …").
    """

    def __init__(
        self,
        size: int = 32,
        font_path: str | Path | None = None,
        seed: int = 0,
        caption_variants: bool = True,
        flags: bool = True,
        phrasing: str = "names",
    ):
        if size < 1:
            raise ValueError(f"need size ≥ 1, got {size}")
        if phrasing not in PHRASINGS:
            raise ValueError(f"unknown phrasing {phrasing!r}; valid: {', '.join(PHRASINGS)}")
        self.font_path = str(font_path or DEFAULT_FONT)
        self.entries = emoji_entries(load_font(self.font_path), flags=flags)
        self.size, self.seed, self.caption_variants, self.epoch = size, seed, caption_variants, 0
        self.captioner = EmojiCaptioner(self.entries, colour_of=self.colour) if phrasing == "typed" else None

    def colour(self, index: int) -> str:
        """The colour word of emoji ``index``, read from its 32×32 picture (``colour_name``)."""
        return colour_name(render_emoji(self.font_path, self.entries[index].char, COLOUR_SIZE))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries)

    def caption(self, index: int) -> str:
        """Emoji i's caption in this epoch: its name, or with variants one of its names drawn by
        (seed, index, epoch)."""
        if self.captioner is not None:
            return self.captioner.caption(index, self.seed, self.epoch)
        entry = self.entries[index]
        names = (entry.name, *entry.variants)
        choice = 0
        if self.caption_variants and len(names) > 1:
            choice = int(
                torch.randint(len(names), (), generator=item_generator(self.seed, index, self.epoch))
            )
        return names[choice]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        image = render_emoji(self.font_path, self.entries[index].char, self.size).clone()
        return image, self.caption(index)

    def cache_params(self) -> dict[str, object]:
        """What decides the pictures (``noisecraft.data.cache``): size, the font file, the emoji drawn,
        Pillow's version; ``version`` counts changes of the drawing code."""
        font = Path(self.font_path).stat()
        chars = hashlib.sha256("\n".join(e.char for e in self.entries).encode()).hexdigest()[:16]
        return {"version": 1, "size": self.size, "font": self.font_path, "font_bytes": font.st_size,
                "font_mtime_ns": font.st_mtime_ns, "emoji": chars, "pillow": PIL.__version__}  # fmt: skip

    @property
    def captions(self) -> list[str]:
        """The names (typed phrasings are too many to list: a frozen encoder embeds them on first use)."""
        if self.captioner is not None:
            return sorted({n for names in self.captioner.names for n in names})
        names = {
            n for e in self.entries for n in ((e.name, *e.variants) if self.caption_variants else (e.name,))
        }
        return sorted(names)
