"""Read a tones clip back from its waveform (parts, kinds, pitch, chords, sweeps, hits, loudness).

No learned model, only signal processing on the samples:
- loudness: the largest 32-ms RMS against the geometric mean of the two levels;
- onsets: where the RMS envelope rises above a tenth of its maximum (-20 dB); each run above it
  is one sound;
- per sound, from its Hann-windowed spectrum: a noise burst (drum) by spectral flatness; a sweep by
  its spread spectrum and the peak frequency of its first and last quarters; otherwise the root
  (the lowest strong peak) is the pitch, two more peaks within the octave above make a chord,
  and the timbre is the strongest of the overtones at 2 (pluck), 2.76 (bell) and 3 (square) times
  the root — none: a sine, or a (high) pluck when the level fades;
- consecutive sounds read the same are one part sounding several times.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import torch

from ..audio import SAMPLE_RATE
from .tones import (
    CHORD_NOUNS,
    COUNT_WORDS,
    LOUDNESS,
    LOUDNESS_WORDS,
    NOUNS,
    PITCH_TOPS,
    PITCH_WORDS,
    PLURALS,
    SWEEP_NOUNS,
    Clip,
    Part,
)

FRAME = 256  # samples per RMS frame (32 ms)
ONSET_DB = -20.0  # a sound is where the envelope is within this of its maximum
MIN_SOUND = 0.03  # seconds: shorter runs are clicks
FLATNESS_DRUM = 0.2  # spectral flatness above this is noise (white noise ≈ 0.56, a tone ≈ 0.01)
SWEEP_RATIO = 2.0  # last-quarter / first-quarter peak frequency of a sweep: ≈ 2.8 up, 0.35 down
SWEEP_CONCENTRATION = 0.2  # a sweep puts less than this of its power within ±3% of its peak
DECAY_RATIO = 0.6  # a fading sound's second half is below this fraction of its peak
PEAK_FRACTION = 0.3
CHORD_FRACTION = 0.1  # a chord note or overtone counts from this fraction of the strongest peak
OVERTONES = {"pluck": 2.0, "bell": 2.76, "square": 3.0}


def _envelope(x: np.ndarray, frame: int = FRAME) -> np.ndarray:
    """RMS over ``frame`` samples every frame/8 samples, [frames]."""
    power = np.convolve(x * x, np.ones(frame) / frame, mode="same")
    return np.sqrt(power[:: frame // 8])


def _runs(active: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) index pairs of the runs of True in a boolean array."""
    edges = np.diff(np.concatenate([[0], active.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def _spectrum(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies, magnitudes) of a Hann-windowed, zero-padded FFT, limited to 60-3900 Hz."""
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x)), 16384))
    freqs = np.fft.rfftfreq(16384, 1 / SAMPLE_RATE)
    band = (freqs > 60) & (freqs < 3900)
    return freqs[band], mag[band]


def _level_near(freqs: np.ndarray, mag: np.ndarray, f: float, tolerance: float = 0.04) -> float:
    near = np.abs(freqs - f) < tolerance * f
    return float(mag[near].max()) if near.any() else 0.0


def _peaks(mag: np.ndarray, floor: float) -> np.ndarray:
    """Indices of local maxima above ``floor``."""
    inner = (mag[1:-1] >= mag[:-2]) & (mag[1:-1] > mag[2:]) & (mag[1:-1] > floor)
    return np.flatnonzero(inner) + 1


def _decays(x: np.ndarray) -> bool:
    """Whether a sound fades (plucks, bells) rather than holding its level (sines, squares)."""
    env = _envelope(x, 64)  # 8-ms frames: a high pluck can fade within 60 ms
    n = len(env)
    return bool(np.median(env[int(0.5 * n) : int(0.8 * n) + 1]) < DECAY_RATIO * env.max())


def read_sound(x: np.ndarray) -> Part:
    """What one sound (its samples) is: kind, pitch register, chord or sweep direction."""
    freqs, mag = _spectrum(x)
    power = mag**2 + 1e-20
    if np.exp(np.log(power).mean()) / power.mean() > FLATNESS_DRUM:
        return Part("drum")
    near_peak = np.abs(freqs - freqs[np.argmax(mag)]) < 0.03 * freqs[np.argmax(mag)]
    quarter = len(x) // 4
    if quarter >= 256 and power[near_peak].sum() < SWEEP_CONCENTRATION * power.sum():
        first, last = (freqs[np.argmax(_spectrum(q)[1])] for q in (x[:quarter], x[-quarter:]))
        if last / first > SWEEP_RATIO or first / last > SWEEP_RATIO:
            return Part("sweep", direction="rising" if last > first else "falling")
    strongest = mag.max()
    peaks = _peaks(mag, PEAK_FRACTION * strongest)
    root = freqs[peaks[0]] if len(peaks) else freqs[np.argmax(mag)]
    pitch = next((p for p, top in PITCH_TOPS.items() if root < top), "high")
    quiet_peaks = _peaks(mag, CHORD_FRACTION * strongest)  # a chord's plucks fade at their own rates
    in_octave = [p for p in quiet_peaks if 1.1 * root < freqs[p] < 1.9 * root]
    chord = len(in_octave) >= 2
    levels = {kind: _level_near(freqs, mag, ratio * root) for kind, ratio in OVERTONES.items()}
    kind = max(levels, key=levels.get)
    if levels[kind] < 0.08 * _level_near(freqs, mag, root):
        kind = "pluck" if _decays(x) else "sine"  # a high pluck's overtones fade first; its level too
    if chord and kind != "pluck":
        kind = "sine"  # chords are drawn on sines and plucks only; a chord's 2.52·root reads as 'bell'
    return Part(kind, None if kind == "drum" else pitch, chord)


def read_clip(wave: torch.Tensor | np.ndarray) -> Clip:
    """The parts (in time order) and loudness of a clip's waveform [CLIP_SAMPLES] in [-1, 1]."""
    x = wave.detach().double().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave, float)
    if x.ndim != 1 or len(x) < FRAME:
        raise ValueError(f"need a mono waveform of at least {FRAME} samples, got shape {x.shape}")
    env = _envelope(x)
    level = float(np.sqrt(LOUDNESS["loud"] * LOUDNESS["soft"]))
    loudness = "loud" if env.max() > level else "soft"
    hop = FRAME // 8
    sounds = []
    for start, stop in _runs(env > env.max() * 10 ** (ONSET_DB / 20)):
        if (stop - start) * hop >= MIN_SOUND * SAMPLE_RATE:
            sounds.append(read_sound(x[start * hop : stop * hop]))
    parts: list[Part] = []
    for sound in sounds:
        if parts and replace(parts[-1], count=1) == sound:
            parts[-1] = replace(parts[-1], count=parts[-1].count + 1)
        else:
            parts.append(sound)
    return Clip(tuple(parts), loudness)


# ---------------------------------------------------------------------------------------------
# Captions as clips


_WORD_KIND = {w: kind for kind, nouns in NOUNS.items() for n in nouns for w in (n, PLURALS[n])}
_WORD_CHORD = {n: kind for kind, nouns in CHORD_NOUNS.items() for n in nouns}
_WORD_SWEEP = {n: d for d, nouns in SWEEP_NOUNS.items() for n in nouns}
_PITCH_OF = {w: p for p, words in PITCH_WORDS.items() for w in words}
_LOUDNESS_OF = {w: level for level, words in LOUDNESS_WORDS.items() for w in words}
_LOUDNESS_OF.update(loudly="loud", softly="soft")
_COUNT_OF = {w: n for n, w in COUNT_WORDS.items()}
_NOUN_PATTERN = "|".join(
    sorted(map(re.escape, [*_WORD_KIND, *_WORD_CHORD, *_WORD_SWEEP]), key=len, reverse=True)
)


def _parse_part(text: str) -> Part:
    """One sound's phrase ('three deep drum hits', 'a high strummed chord') as a Part."""
    words = text.split()
    pitch = next((_PITCH_OF[w] for w in words if w in _PITCH_OF), None)
    count = next((_COUNT_OF[w] for w in words if w in _COUNT_OF), 1)
    noun = re.search(rf"\b({_NOUN_PATTERN})\b", text).group(1)
    if noun in _WORD_SWEEP:
        return Part("sweep", direction=_WORD_SWEEP[noun])
    if noun in _WORD_CHORD:
        return Part(_WORD_CHORD[noun], pitch, True)
    kind = _WORD_KIND[noun]
    return Part(kind, None if kind == "drum" else pitch, False, None, count)


def parse_caption(caption: str) -> Clip:
    """Turn a caption in the dataset's vocabulary into the clip it describes; ValueError otherwise."""
    text = " ".join(re.sub(r"[^a-z\-]+", " ", caption.lower()).split())
    loudness = next((_LOUDNESS_OF[w] for w in text.split() if w in _LOUDNESS_OF), None)
    pieces = [p for p in re.split(r"\b(?:followed by|and then|then)\b", text) if p.strip()]
    phrases = [p for p in pieces if re.search(rf"\b({_NOUN_PATTERN})\b", p)]
    if not 1 <= len(phrases) <= 2 or loudness is None:
        raise ValueError(f"caption must name one or two sounds and a loudness: {caption!r}")
    return Clip(tuple(_parse_part(p) for p in phrases), loudness)


def fact_checks(read: Clip, want: Clip) -> dict[str, bool]:
    """Each fact on its own: ``parts`` (how many sounds one after the other) and ``loudness`` always;
    ``kind``, ``pitch``, ``chord``, ``direction`` and ``count`` (hits) when the number of parts is right."""
    facts = {"parts": len(read.parts) == len(want.parts), "loudness": read.loudness == want.loudness}
    if facts["parts"]:
        pairs = list(zip(read.parts, want.parts))
        for fact in ("kind", "pitch", "chord", "direction", "count"):
            facts[fact] = all(getattr(r, fact) == getattr(w, fact) for r, w in pairs)
    return facts


def matches(wave: torch.Tensor | np.ndarray, target: str | Clip) -> bool:
    """Whether the waveform sounds as the caption (or clip) says, in every fact."""
    want = parse_caption(target) if isinstance(target, str) else target
    return all(fact_checks(read_clip(wave), want).values())
