"""Give a saved model a vocabulary: its text encoder then hears each prompt as the nearest caption the
network was trained on (``text.VocabularyTextEncoder``). The model folder is copied, never changed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..text.vocabulary import VocabularyTextEncoder, unwrap
from .folder import find_model, load_parts

MAX_CAPTION_FILE = 16 * 2**20  # bytes
KEPT_FILES = ("training.json", "MODEL_CARD.md")  # copied beside the parts, so `ship` takes the result


def read_captions(path: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
    """Captions and phrases from a UTF-8 text file: a line is a caption, or ``phrase<TAB>caption`` (another
    way to say a caption, which joins the captions if new); blank lines and ``#`` comments are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--captions {path}: no such file")
    if path.stat().st_size > MAX_CAPTION_FILE:
        raise ValueError(f"--captions {path}: larger than {MAX_CAPTION_FILE // 2**20} MiB")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"--captions {path}: not UTF-8 text") from None
    captions: dict[str, int] = {}
    phrases: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = [part.strip() for part in line.split("\t")]
        if len(parts) > 2 or not all(parts):
            raise ValueError(f"--captions {path}:{number}: give 'caption' or 'phrase<TAB>caption'")
        index = captions.setdefault(parts[-1], len(captions))
        if len(parts) == 2:
            phrases.setdefault(parts[0], index)
    if not captions:
        raise ValueError(f"--captions {path}: no captions")
    return list(captions), phrases


def dataset_vocabulary(name: str) -> tuple[list[str], dict[str, int]]:
    """A built-in dataset's captions and phrases (emoji: the names, with aliases and CLDR keywords)."""
    if name != "emoji":
        raise ValueError(f"--dataset {name!r}: only emoji has a vocabulary (or give --captions FILE)")
    from ..data.emoji import emoji_entries, load_font
    from ..data.emoji_captions import vocabulary

    return vocabulary(emoji_entries(load_font()))


def add_vocabulary(
    model: str | os.PathLike,
    out: str | os.PathLike,
    captions: list[str],
    phrases: dict[str, int],
    source: str = "",
) -> Path:
    """Copy ``model`` to the new folder ``out`` with its text encoder wrapped by the vocabulary (a
    vocabulary it had is replaced); ``source`` says where the list came from (for the model card)."""
    original = find_model(model)
    parts = load_parts(original)
    if parts.text_encoder is None:
        raise ValueError(f"{original}: an unconditional model has no text encoder to give a vocabulary")
    parts.text_encoder = VocabularyTextEncoder.build(unwrap(parts.text_encoder), captions, phrases, source)
    folder = parts.save_new(out)
    for name in KEPT_FILES:
        if (original / name).is_file():
            shutil.copy(original / name, folder / name)
    return folder
