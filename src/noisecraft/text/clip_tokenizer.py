"""CLIP's byte-level BPE tokenizer (Radford et al. 2021), rebuilt from the vocabulary file alone.

The one data file is ``bpe_simple_vocab_16e6.txt.gz`` from the ``open-clip-torch`` wheel (read as
data: ``open_clip`` itself is never imported, its ``__init__`` wants torchvision). The algorithm:

1. clean the text: ftfy's ``fix_text`` when ftfy is installed (as CLIP does), else Unicode NFC (the
   normalisation ftfy applies last); then ``html.unescape`` twice, whitespace runs → one space, lower case;
2. split it into words with CLIP's pattern (contractions, letter runs, single digits, other runs);
3. map each word's UTF-8 bytes to printable characters (GPT-2's byte → unicode table, so every byte
   is a symbol and nothing is ever unknown), mark its last symbol with ``</w>``;
4. merge adjacent symbol pairs, lowest-ranked merge first, until no ranked pair is left (Sennrich et
   al. 2016's BPE); the symbols are the tokens.

Vocabulary (49408 ids): 256 bytes, 256 bytes + ``</w>``, the 48894 merges, ``<|startoftext|>``
(49406), ``<|endoftext|>`` (49407). A prompt is framed as BOS, tokens, EOS and padded to 77.

Known differences from transformers' ``CLIPTokenizer`` (the one diffusers uses): it neither applies
ftfy nor unescapes HTML (``&amp;`` stays five characters there, one here); everything else agrees.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import unicodedata
from pathlib import Path

import torch
from torch import Tensor

from .tokenizer import check_prompts, warn_truncated

try:
    import ftfy  # optional: CLIP applies its fix_text; without it only its Unicode normalisation is done
except ImportError:
    ftfy = None

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # CLIP keeps lines 1 .. 48894 of the file (line 0 is a header)
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
CONTEXT = 77  # CLIP's context length: BOS + 75 tokens + EOS
# CLIP's pre-tokenizer; special tokens written in a prompt stay whole (they map to their own ids)
PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def open_clip_vocab_path() -> Path:
    """Where the installed open-clip-torch wheel keeps CLIP's BPE file (found without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open-clip-torch is not installed: `pip install --no-deps open-clip-torch`")
    path = Path(next(iter(spec.submodule_search_locations))) / VOCAB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the open-clip-torch install")
    return path


def read_merges(path: str | Path) -> list[tuple[str, str]]:
    """The ranked merges of a CLIP BPE file (gzipped text: a header line, then one 'a b' pair a line)."""
    lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{path}: expected {NUM_MERGES} merge lines of two symbols each")
    return merges  # type: ignore[return-value]


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → character table: printable bytes map to themselves, the rest to 256+."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


def clip_vocab(merges: list[tuple[str, str]]) -> list[str]:
    """CLIP's token list in id order: bytes, bytes + '</w>', merged pairs, then BOS and EOS."""
    symbols = list(bytes_to_unicode().values())
    return [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), BOS_TOKEN, EOS_TOKEN]


def clean(text: str) -> str:
    """CLIP's text cleanup: ftfy (or NFC without it), HTML unescape twice, collapsed spaces, lower case."""
    text = unicodedata.normalize("NFC", text) if ftfy is None else ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


class CLIPTokenizer:
    """CLIP's byte-level BPE (Radford et al. 2021): text → ids framed by BOS/EOS, padded to 77."""

    def __init__(self, merges: list[tuple[str, str]], pad_id: int | None = None):
        import regex  # \p{L} classes; a transformers dependency

        self.vocab = clip_vocab(merges)
        self.ids = {token: i for i, token in enumerate(self.vocab)}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.bos_id, self.eos_id = self.ids[BOS_TOKEN], self.ids[EOS_TOKEN]
        self.pad_id = self.eos_id if pad_id is None else pad_id  # SD1 pads with EOS, OpenCLIP with 0
        self.pattern = regex.compile(PATTERN, regex.IGNORECASE)
        self.byte_table = bytes_to_unicode()
        self.byte_values = {c: b for b, c in self.byte_table.items()}
        self.bpe = functools.lru_cache(maxsize=65536)(self._bpe)  # one BPE per distinct word

    @classmethod
    def from_open_clip(cls, pad_id: int | None = None) -> CLIPTokenizer:
        """The tokenizer from the BPE file inside the installed open-clip-torch wheel."""
        return cls(read_merges(open_clip_vocab_path()), pad_id)

    def _bpe(self, word: str) -> tuple[str, ...]:
        """Merge a word's symbols, lowest-ranked pair first, until no adjacent pair has a rank."""
        if word in (BOS_TOKEN, EOS_TOKEN):
            return (word,)
        symbols = [*word[:-1], word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = set(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, NUM_MERGES))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):  # merge every occurrence of the pair, left to right
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(symbols)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without BOS/EOS and without truncation."""
        ids = []
        for word in self.pattern.findall(clean(text)):
            symbols = "".join(self.byte_table[b] for b in word.encode("utf-8"))
            ids.extend(self.ids[s] for s in self.bpe(symbols))
        return ids

    def decode(self, ids: list[int] | Tensor) -> str:
        """Text of a token list: BOS, EOS and padding dropped, '</w>' read as a space."""
        ids = ids.tolist() if isinstance(ids, Tensor) else ids
        text = "".join(self.vocab[i] for i in ids if i < self.bos_id)
        data = bytes(self.byte_values[c] for c in text)  # '</w>' is four printable bytes: replaced after
        return data.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(self, prompts: list[str], max_length: int = CONTEXT) -> tuple[Tensor, Tensor]:
        """ids [B, max_length] (BOS, tokens, EOS, padding; cut keeping EOS last) and mask [B, max_length]
        (bool, True from BOS to EOS)."""
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (BOS and EOS), got {max_length}")
        tokens = [self.encode(p) for p in check_prompts(prompts)]
        warn_truncated([len(t) + 2 for t in tokens], max_length, "CLIP tokenizer")
        ids = torch.full((len(tokens), max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(tokens), max_length, dtype=torch.bool)
        for i, row in enumerate(tokens):
            framed = [self.bos_id, *row[: max_length - 2], self.eos_id]
            ids[i, : len(framed)] = torch.tensor(framed)
            mask[i, : len(framed)] = True
        return ids, mask
