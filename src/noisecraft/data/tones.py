"""Procedural sounds: notes, chords, sweeps and drum hits, loud or soft, one sound then another.

The sound counterpart of ``shapes``: every clip is a pure function of (seed, split, index), drawn
from one torch.Generator and synthesised in numpy at ``audio.SAMPLE_RATE`` (one second). An item is
the clip's log-mel spectrogram image [1, 64, 64] in [-1, 1] (``audio.waveform_to_image``) with a
caption a person would write; ``waveform(i)`` gives the sound itself. ``tones_oracle`` reads every
fact of a caption back from a waveform.

Timbres: sine (a beep), square (band-limited odd harmonics, a buzz), pluck (Karplus & Strong 1983),
bell (the inharmonic partials 1 : 2.76 : 5.40 : 8.93 of a free bar, decaying), drum (a noise burst).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import Dataset

from ..audio import (
    CLIP_SAMPLES,
    F_MIN,
    MEL_BREAK_HZ,
    SAMPLE_RATE,
    SPECTROGRAM,
    SpectrogramFormat,
    waveform_to_image,
)
from .common import index_seed, item_generator

TIMBRES = ("sine", "square", "pluck", "bell", "drum")
KINDS = (*TIMBRES, "sweep")
PITCHES: dict[str, tuple[float, ...]] = {
    "low": (196.0, 220.0, 246.9, 261.6),  # G3 A3 B3 C4
    "mid": (392.0, 440.0, 493.9, 523.3),  # G4 A4 B4 C5
    "high": (784.0, 880.0, 987.8, 1046.5),  # G5 A5 B5 C6
}
# ``notes="semitones"``: every semitone from G to D♯ in the low and middle registers and from G to C in
# the high one (nine, nine and six notes instead of four each), so a timbre is heard at more places on
# the frequency axis; the registers and their words stay. (Above C6 a square wave's third harmonic
# lies in the spectrogram's top bands, where Griffin-Lim loses it.)
# ``notes="chromatic"``: every semitone from G3 to C6 but E5, the registers meeting where the oracle divides
# them (PITCH_TOPS, midway between D♯ and E): low G3-D♯4, mid E4-D♯5, high F5-C6. A timbre heard in the
# middle register then reaches to a semitone or two from either neighbour instead of four. (E5 is left out:
# a Karplus-Strong string there, its delay rounded to whole samples, sounds at 640 Hz, on the boundary.)
NOTE_SETS: dict[str, dict[str, tuple[float, ...]]] = {
    "four": PITCHES,
    "semitones": {
        name: tuple(g * 2 ** (k / 12) for k in range(n))
        for name, g, n in (("low", 196.0, 9), ("mid", 392.0, 9), ("high", 784.0, 6))
    },
    "chromatic": {
        name: tuple(196.0 * 2 ** (k / 12) for k in range(first, last + 1))
        for name, first, last in (("low", 0, 8), ("mid", 9, 20), ("high", 22, 29))
    },
}
DEFAULT_NOTES = "four"
PITCH_TOPS = {"low": 320.0, "mid": 640.0}  # Hz: a root below this is in the register (above both: high)
CHORD_RATIOS = (1.0, 2 ** (4 / 12), 2 ** (7 / 12))  # a major triad
# Chords are drawn on sines and low plucks (a high Karplus-Strong string, 5-10 samples long, is too
# out of tune and fades too fast for a chord).
CHORDS = frozenset({("sine", "low"), ("sine", "high"), ("pluck", "low")})
BELL_PARTIALS = (
    (1.0, 1.0, 0.5),
    (2.76, 0.6, 0.25),
    (5.40, 0.4, 0.15),
    (8.93, 0.25, 0.1),
)  # ratio, amp, τ (s)
PLUCK_POINT = 0.27  # harmonics fall as 1/n², so the fundamental leads
SWEEP_RANGE = (300.0, 1200.0)  # Hz, two octaves
LOUDNESS = {"loud": 0.35, "soft": 0.06}  # the clip's largest 32-ms RMS
HIT_LENGTH, HIT_SPACING = 0.12, 0.22  # seconds: repeated hits
PART_SPANS = {1: ((0.05, 0.85),), 2: ((0.05, 0.45), (0.55, 0.95))}  # seconds, by number of parts
# (kind, pitch) pairs never drawn in training: each held-out clip holds one of them. Training plays each
# of these timbres in the two other registers, so a timbre is heard at more than one pitch.
HELDOUT = frozenset({("bell", "low"), ("square", "high")})
SPLITS = ("train", "heldout")
# What an item holds: the log-mel image a U-Net draws, or the sound itself for a 1-D net over samples,
# zero-padded to WAVE_SAMPLES (a power of two, so every downsampling of the net divides it).
REPRESENTATIONS = ("spectrogram", "waveform")
WAVE_SAMPLES = 8192

NOUNS = {
    "sine": ("beep", "sine tone", "pure tone"),
    "square": ("buzz", "square wave", "buzzy tone"),
    "pluck": ("plucked string", "guitar-like note", "pluck"),
    "bell": ("bell", "bell tone", "chime"),
    "drum": ("drum hit", "drum beat", "thump"),
}
PLURALS = {noun: noun + ("es" if noun.endswith("z") else "s") for nouns in NOUNS.values() for noun in nouns}
CHORD_NOUNS = {"sine": ("sine chord", "chord of pure tones"), "pluck": ("plucked chord", "strummed chord")}
SWEEP_NOUNS = {"rising": ("rising sweep", "tone sweeping up", "rising whistle"),
               "falling": ("falling sweep", "tone sweeping down", "falling whistle")}  # fmt: skip
PITCH_WORDS = {
    "low": ("low", "deep"),
    "mid": ("mid-range", "mid-pitched", "medium"),
    "high": ("high", "high-pitched"),
}
LOUDNESS_WORDS = {"loud": ("loud", "strong"), "soft": ("soft", "quiet", "gentle")}
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
# ``vague``: the share of training captions where one note leaves out a word, its register ("a loud buzz")
# or its timbre ("a loud high sound"), so each word is also learnt apart from the other.
LEFT_OUT = ("pitch", "kind")
VAGUE_NOUN = "sound"
JOINS = ("{a} followed by {b}", "{a} then {b}", "first {a}, then {b}", "{a} and then {b}")


@dataclass(frozen=True)
class Part:
    """One sound of a clip: a kind (a timbre or 'sweep'), its pitch register, chord or direction, and
    how many times it sounds (1-4, back to back)."""

    kind: str
    pitch: str | None = None  # low | mid | high; None for drums and sweeps
    chord: bool = False
    direction: str | None = None  # rising | falling, sweeps only
    count: int = 1


@dataclass(frozen=True)
class Clip:
    parts: tuple[Part, ...]  # one, or two played one after the other
    loudness: str  # loud | soft


# ---------------------------------------------------------------------------------------------
# Synthesis (numpy float64; the noise of plucks and drums comes from the item's generator)


def _envelope(n: int, attack: float = 0.01, release: float = 0.03) -> np.ndarray:
    """A flat envelope with linear attack and release, [n]."""
    a, r = max(1, int(attack * SAMPLE_RATE)), max(1, int(release * SAMPLE_RATE))
    return np.minimum(np.minimum(np.arange(n) / a, 1.0), np.minimum((n - np.arange(n)) / r, 1.0))


def _tone(kind: str, freq: float, n: int, noise: np.ndarray) -> np.ndarray:
    """n samples of one note of a timbre at ``freq`` Hz (peak around 1)."""
    t = np.arange(n) / SAMPLE_RATE
    if kind == "sine":
        return np.sin(2 * np.pi * freq * t)
    if kind == "square":  # band-limited: odd harmonics below 3.8 kHz, amplitudes 1/k
        ks = np.arange(1, int(3800 / freq) + 1, 2)
        return sum(np.sin(2 * np.pi * k * freq * t) / k for k in ks)
    if kind == "bell":
        return sum(a * np.exp(-t / tau) * np.sin(2 * np.pi * r * freq * t)
                   for r, a, tau in BELL_PARTIALS if r * freq < 3800)  # fmt: skip
    if kind == "pluck":  # Karplus-Strong: a noise-filled delay line, averaged as it recirculates
        period = max(2, round(SAMPLE_RATE / freq - 0.5))  # the two-point average delays by half a sample
        out = np.empty(n)
        u = np.arange(period) / period  # the string's shape when released: plucked at 0.27 of its length
        shape = np.where(u < PLUCK_POINT, u / PLUCK_POINT, (1 - u) / (1 - PLUCK_POINT))
        out[:period] = shape - shape.mean() + 0.2 * noise[:period]  # a little noise for the attack
        for start in range(period, n, period):
            seg = out[start - period : start]
            avg = 0.996 * 0.5 * (seg + np.roll(seg, 1))
            out[start : start + period] = avg[: n - start]
        return out
    if kind == "drum":
        return noise[:n] * np.exp(-t / 0.04)
    raise ValueError(f"unknown timbre {kind!r}; valid: {', '.join(TIMBRES)}")


def _sweep(direction: str, n: int) -> np.ndarray:
    """An exponential sine sweep across SWEEP_RANGE, up or down, [n]."""
    lo, hi = SWEEP_RANGE
    u = np.arange(n) / n
    freq = lo * (hi / lo) ** (u if direction == "rising" else 1 - u)
    return np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE)


def _frame_rms_max(x: np.ndarray, frame: int = 256) -> float:
    """The largest RMS over frames of ``frame`` samples (hop frame/4)."""
    power = np.convolve(x * x, np.ones(frame) / frame, mode="valid")[:: frame // 4]
    return float(np.sqrt(power.max()))


def _sound(part: Part, freq: float, span: tuple[float, float], noise: np.ndarray) -> np.ndarray:
    """One part's samples over its span (hits and sweeps included), each hit at unit peak RMS, [n]."""
    n = int((span[1] - span[0]) * SAMPLE_RATE)
    if part.kind == "sweep":
        return _sweep(part.direction, n) * _envelope(n, 0.02, 0.05)
    hit = n if part.count == 1 else int(HIT_LENGTH * SAMPLE_RATE)
    ratios = CHORD_RATIOS if part.chord else (1.0,)
    one = sum(_tone(part.kind, freq * r, hit, noise[i * CLIP_SAMPLES :]) for i, r in enumerate(ratios))
    one = one * _envelope(hit, 0.002 if part.kind in ("pluck", "drum") else 0.01)
    one = one / _frame_rms_max(one)
    out = np.zeros(n)
    for h in range(part.count):
        start = int(h * HIT_SPACING * SAMPLE_RATE)
        out[start : start + hit] += one[: n - start]
    return out


def synthesise(clip: Clip, freqs: tuple[float, ...], noise_seed: int) -> np.ndarray:
    """The clip's waveform [CLIP_SAMPLES] in [-1, 1]: parts at their spans, scaled to the loudness."""
    noise = np.random.default_rng(noise_seed).uniform(-1, 1, 3 * CLIP_SAMPLES)
    wave = np.zeros(CLIP_SAMPLES)
    for part, freq, span in zip(clip.parts, freqs, PART_SPANS[len(clip.parts)]):
        sound = _sound(part, freq, span, noise)
        start = int(span[0] * SAMPLE_RATE)
        wave[start : start + len(sound)] = sound / _frame_rms_max(sound)
    return np.clip(wave * LOUDNESS[clip.loudness], -1, 1)


# ---------------------------------------------------------------------------------------------
# Drawing clips and captions (every draw from one torch.Generator)


def _choice(g: torch.Generator, options: tuple | list) -> object:
    return options[int(torch.randint(len(options), (), generator=g))]


def _draw_part(g: torch.Generator, split: str, held: bool, alone: bool) -> Part:
    """A part; with ``held`` its (kind, pitch) is a held-out pair, and never one in training."""
    if held:
        kind, pitch = _choice(g, sorted(HELDOUT))
    else:
        kind = _choice(g, KINDS)
        pitch = _choice(g, tuple(PITCHES)) if kind not in ("drum", "sweep") else None
        while (kind, pitch) in HELDOUT:
            pitch = _choice(g, tuple(PITCHES))
    if kind == "sweep":
        return Part("sweep", direction=_choice(g, ("rising", "falling")))
    chord = (kind, pitch) in CHORDS and torch.rand((), generator=g).item() < 0.3
    count = int(torch.randint(1, 5, (), generator=g)) if alone and not chord else 1
    return Part(kind, pitch, chord, None, count)


def sample_clip(g: torch.Generator, split: str = "train") -> Clip:
    """One or two parts (two with probability 1/2), loud or soft, from the given split."""
    if split not in SPLITS:
        raise ValueError(f"unknown tones split {split!r}; valid: {', '.join(SPLITS)}")
    loudness = _choice(g, tuple(LOUDNESS))
    if torch.rand((), generator=g).item() < 0.5:
        return Clip((_draw_part(g, split, split == "heldout", alone=True),), loudness)
    first = _draw_part(g, split, split == "heldout", alone=False)
    second = first
    while second == first:  # two different sounds, so the parts can be told apart from repeats
        second = _draw_part(g, split, False, alone=False)
    parts = (first, second) if torch.rand((), generator=g).item() < 0.5 else (second, first)
    return Clip(parts, loudness)


def _noun(g: torch.Generator, part: Part, left_out: str | None = None) -> str:
    """The phrase of one part; ``left_out`` ("pitch" or "kind") omits that word of a note (the same draws
    from ``g`` either way)."""
    if part.kind == "sweep":
        return _choice(g, SWEEP_NOUNS[part.direction])
    nouns = CHORD_NOUNS[part.kind] if part.chord else NOUNS[part.kind]
    noun = _choice(g, nouns)
    pitch = f"{_choice(g, PITCH_WORDS[part.pitch])} " if part.pitch else ""
    if left_out == "pitch":
        pitch = ""
    if left_out == "kind":
        noun = VAGUE_NOUN
    if part.count > 1:
        return f"{COUNT_WORDS[part.count]} {pitch}{noun + 's' if left_out == 'kind' else PLURALS[noun]}"
    return f"{pitch}{noun}"


def leave_out_words(clip: Clip, g: torch.Generator, rate: float) -> tuple[str | None, ...]:
    """With probability ``rate``, one note of the clip (not a chord, drum or sweep) loses its register
    or its timbre word in the caption (``vague``); else nothing is left out. One entry per part."""
    notes = [i for i, p in enumerate(clip.parts) if p.pitch and not p.chord]
    chosen, word = int(torch.randint(2, (), generator=g)), _choice(g, LEFT_OUT)
    if not notes or torch.rand((), generator=g).item() >= rate:
        return (None,) * len(clip.parts)
    which = notes[chosen % len(notes)]
    return tuple(word if i == which else None for i in range(len(clip.parts)))


def _with_article(phrase: str) -> str:
    if phrase.split()[0] in COUNT_WORDS.values():
        return phrase
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def describe(clip: Clip, g: torch.Generator, left_out: tuple[str | None, ...] | None = None) -> str:
    """A caption naming every part (kind, pitch, chord, direction, count) and the loudness; ``left_out``
    (``leave_out_words``) words it leaves out, per part."""
    loud = _choice(g, LOUDNESS_WORDS[clip.loudness])
    phrases = [_noun(g, p, w) for p, w in zip(clip.parts, left_out or (None,) * len(clip.parts))]
    if torch.rand((), generator=g).item() < 0.5:  # the loudness word leads the first sound ...
        words = phrases[0].split(" ", 1)  # "three loud drum hits", "a loud beep"
        count = words[0] in COUNT_WORDS.values()
        phrases[0] = f"{words[0]} {loud} {words[1]}" if count else f"{loud} {phrases[0]}"
        tail = ""
    else:  # ... or closes the caption
        tail = _choice(g, (f", {loud}", f", {'loudly' if clip.loudness == 'loud' else 'softly'}"))
    phrases = [_with_article(p) for p in phrases]
    if len(phrases) == 1:
        return phrases[0] + tail
    return _choice(g, JOINS).format(a=phrases[0], b=phrases[1]) + tail


class TonesDataset(Dataset):
    """Map-style procedural clips: item i is (log-mel image [1, 64, 64] in [-1, 1], caption), a pure
    function of (seed, split, i); ``waveform(i)`` is its sound [CLIP_SAMPLES] in [-1, 1]. ``f_min`` and
    ``mel_break_hz`` set the frequency axis (``audio.SpectrogramFormat``); ``audio`` is the format, which a
    model trained on the images records. ``representation="waveform"``: item i is the sound itself,
    [1, WAVE_SAMPLES] (zero after CLIP_SAMPLES). ``notes``: the notes of each register (NOTE_SETS).
    ``vague``: the share of training captions that leave out one note's register or timbre word
    (``leave_out_words``; the sounds are the same)."""

    def __init__(
        self,
        size: int = 64,
        length: int = 100_000,
        seed: int = 0,
        split: str = "train",
        f_min: float = F_MIN,
        mel_break_hz: float = MEL_BREAK_HZ,
        representation: str = "spectrogram",
        notes: str = DEFAULT_NOTES,
        vague: float = 0.0,
    ):
        if split not in SPLITS:
            raise ValueError(f"unknown tones split {split!r}; valid: {', '.join(SPLITS)}")
        if representation not in REPRESENTATIONS:
            raise ValueError(
                f"unknown tones representation {representation!r}; valid: {', '.join(REPRESENTATIONS)}"
            )
        if size != 64 or length < 1:
            raise ValueError(
                f"need size = 64 (64 mel bands × 64 frames) and length ≥ 1, got {size}, {length}"
            )
        if notes not in NOTE_SETS:
            raise ValueError(f"unknown tones notes {notes!r}; valid: {', '.join(NOTE_SETS)}")
        if not 0.0 <= vague <= 1.0 or (vague and split != "train"):
            raise ValueError(f"need 0 ≤ vague ≤ 1, and vague only in the train split; got {vague}, {split!r}")
        self.size, self.length, self.seed, self.split = size, length, seed, split
        self.representation, self.notes, self.vague = representation, notes, float(vague)
        self.audio = self.audio_format(f_min=f_min, mel_break_hz=mel_break_hz)

    @staticmethod
    def audio_format(
        f_min: float = F_MIN, mel_break_hz: float = MEL_BREAK_HZ, **_other: object
    ) -> SpectrogramFormat:
        """The spectrogram format of the items made with these options (the others do not change it)."""
        return replace(SPECTROGRAM, f_min=float(f_min), mel_break_hz=float(mel_break_hz))  # 1 and 1.0 alike

    def __len__(self) -> int:
        return self.length

    def _generator(self, index: int) -> torch.Generator:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} tones clips")
        return item_generator(self.seed, index, SPLITS.index(self.split))

    def clip_and_caption(self, index: int) -> tuple[Clip, str]:
        g = self._generator(index)
        clip = sample_clip(g, self.split)
        left_out = None
        if self.vague:  # drawn apart, so the item's sound and its other words stay as they were
            left_out = leave_out_words(clip, item_generator(self.seed, index, 200), self.vague)
        return clip, describe(clip, g, left_out)

    def waveform(self, index: int) -> torch.Tensor:
        """The clip's sound [CLIP_SAMPLES], float32 in [-1, 1]."""
        g = self._generator(index)
        clip = sample_clip(g, self.split)
        describe(clip, g)
        notes = NOTE_SETS[self.notes]
        freqs = tuple(_choice(g, notes[p.pitch]) if p.pitch else 0.0 for p in clip.parts)
        noise_seed = index_seed(self.seed, index, 100 + SPLITS.index(self.split))
        return torch.from_numpy(synthesise(clip, freqs, noise_seed)).float()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        caption = self.clip_and_caption(index)[1]
        wave = self.waveform(index)  # [CLIP_SAMPLES]
        if self.representation == "waveform":
            return torch.nn.functional.pad(wave, (0, WAVE_SAMPLES - len(wave)))[None], caption
        return waveform_to_image(wave[None], self.audio)[0], caption

    def cache_params(self) -> dict[str, object]:
        """What decides every item besides the length (``noisecraft.data.cache``)."""
        # version 2: three registers
        params = {"version": 2, "size": self.size, "seed": self.seed, "split": self.split}
        if self.audio != SPECTROGRAM:  # another frequency axis makes other pixels
            params["audio"] = {"f_min": self.audio.f_min, "mel_break_hz": self.audio.mel_break_hz}
        if self.representation != "spectrogram":
            params["representation"] = self.representation
        if self.notes != DEFAULT_NOTES:
            params["notes"] = self.notes
        if self.vague:
            params["vague"] = self.vague
        return params

    @property
    def captions(self) -> list[str]:
        """Distinct captions over all items, sorted; computed once."""
        if not hasattr(self, "_captions"):
            self._captions = sorted({self.clip_and_caption(i)[1] for i in range(self.length)})
        return self._captions
