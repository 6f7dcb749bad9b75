"""Tones dataset, its oracle and the spectrogram round trip: determinism, truthful captions, read-back."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from noisecraft.audio import CLIP_SAMPLES, image_to_waveform, mel_filters, waveform_to_image
from noisecraft.data import make_dataset
from noisecraft.data.cache import cache_file, cache_key
from noisecraft.data.tones import HELDOUT, KINDS, NOTE_SETS, PITCH_TOPS, PITCHES, Clip, Part, TonesDataset
from noisecraft.data.tones_oracle import fact_checks, matches, parse_caption, read_clip

N = 200


@pytest.fixture(scope="module")
def rendered():
    ds = TonesDataset(length=N, seed=11)
    return [(*ds.clip_and_caption(i), ds.waveform(i)) for i in range(N)]


def test_items_are_a_pure_function_of_seed_and_index():
    a, b = TonesDataset(length=40, seed=3), make_dataset("tones", length=40, seed=3)
    late = b[23]
    image, caption = a[23]
    assert image.shape == (1, 64, 64) and -1 <= image.min() and image.max() <= 1
    assert torch.equal(image, late[0]) and caption == late[1]
    assert torch.equal(a.waveform(5), b.waveform(5)) and a.waveform(5).shape == (CLIP_SAMPLES,)
    other = TonesDataset(length=40, seed=4)
    assert sum(other.clip_and_caption(i)[1] != a.clip_and_caption(i)[1] for i in range(20)) >= 15
    with pytest.raises(IndexError):
        a[40]


def test_captions_state_every_fact(rendered):
    assert all(parse_caption(caption) == clip for clip, caption, _ in rendered)
    assert {p.kind for clip, _, _ in rendered for p in clip.parts} == set(KINDS)
    with pytest.raises(ValueError, match="one or two sounds"):
        parse_caption("a photo of a cat")


def test_oracle_reads_every_fact_of_real_renders(rendered):
    read = [read_clip(wave) for _, _, wave in rendered]
    wrong = [(caption, r) for (clip, caption, _), r in zip(rendered, read) if r != clip]
    assert not wrong, wrong[:3]
    assert all(matches(wave, caption) for _, caption, wave in rendered[:50])


def _near_misses(clip: Clip) -> list[Clip]:
    """The clip with one fact changed: loudness, the first part's pitch / direction / count, or a part
    more or fewer."""
    flips = {"loud": "soft", "soft": "loud", "low": "high", "mid": "low", "high": "mid", "rising": "falling",
             "falling": "rising"}  # fmt: skip
    first, rest = clip.parts[0], clip.parts[1:]
    out = [dataclasses.replace(clip, loudness=flips[clip.loudness])]
    for fact in ("pitch", "direction"):
        if getattr(first, fact) is not None:
            out.append(
                Clip(
                    (dataclasses.replace(first, **{fact: flips[getattr(first, fact)]}), *rest), clip.loudness
                )
            )
    out.append(Clip((dataclasses.replace(first, count=first.count % 4 + 1), *rest), clip.loudness))
    out.append(Clip(clip.parts[:1] if rest else (first, Part("drum")), clip.loudness))
    return out


def test_oracle_rejects_one_changed_fact(rendered):
    total = rejected = 0
    for clip, _, wave in rendered[:100]:
        read = read_clip(wave)
        for want in _near_misses(clip):
            total += 1
            rejected += not all(fact_checks(read, want).values())
    assert total > 300 and rejected == total


def test_heldout_split_is_disjoint_from_training():
    pairs = lambda clip: {(p.kind, p.pitch) for p in clip.parts}  # noqa: E731
    train = [TonesDataset(length=800, split="train").clip_and_caption(i) for i in range(800)]
    held = [TonesDataset(length=200, split="heldout").clip_and_caption(i) for i in range(200)]
    assert all(not pairs(clip) & HELDOUT for clip, _ in train)
    assert all(pairs(clip) & HELDOUT for clip, _ in held)
    assert not {c for _, c in train} & {c for _, c in held}
    seen = set().union(*(pairs(clip) for clip, _ in train))
    for kind, pitch in HELDOUT:  # a held-out timbre is heard in training at every other register
        assert {p for k, p in seen if k == kind} == set(PITCHES) - {pitch}


def test_semitone_notes_keep_the_registers_and_the_oracle_reads_them():
    """notes="semitones" draws more notes per register (same captions, same registers); the oracle still
    reads every fact of every real render, and the notes reach past the four-note set."""
    four, semi = TonesDataset(length=80, seed=9), TonesDataset(length=80, seed=9, notes="semitones")
    assert [four.clip_and_caption(i) for i in range(80)] == [semi.clip_and_caption(i) for i in range(80)]
    assert all(matches(semi.waveform(i), semi.clip_and_caption(i)[1]) for i in range(80))
    for register, notes in NOTE_SETS["semitones"].items():
        assert set(PITCHES[register]) <= {round(f, 1) for f in notes} and len(notes) > len(PITCHES[register])
    assert four.cache_params() != semi.cache_params()
    assert not all(torch.equal(four.waveform(i), semi.waveform(i)) for i in range(10))
    with pytest.raises(ValueError, match="notes"):
        TonesDataset(notes="octaves")


def test_chromatic_notes_fill_each_register_up_to_the_oracles_boundaries():
    """notes="chromatic": every semitone of a register, the registers meeting at PITCH_TOPS (E5 aside);
    the oracle reads every fact of every real render, plucks near the boundaries included."""
    notes = NOTE_SETS["chromatic"]
    assert max(notes["low"]) < PITCH_TOPS["low"] < min(notes["mid"]) < 1.06 * PITCH_TOPS["low"]
    assert max(notes["mid"]) < PITCH_TOPS["mid"] < min(notes["high"])
    assert len(notes["mid"]) == 12 and len(notes["high"]) == 8
    clips = TonesDataset(length=120, seed=9, notes="chromatic")
    assert all(matches(clips.waveform(i), clips.clip_and_caption(i)[1]) for i in range(120))
    assert clips.cache_params() != TonesDataset(length=120, seed=9, notes="semitones").cache_params()


def test_spectrogram_round_trip_keeps_the_facts(rendered):
    """Griffin-Lim from the 64×64 log-mel image: the ceiling of a generated clip's adherence."""
    waves = torch.stack([wave for _, _, wave in rendered[:24]])
    images = waveform_to_image(waves)
    back = image_to_waveform(images)
    assert (waveform_to_image(back) - images).abs().mean() < 0.05  # ≈ 2 dB
    assert sum(read_clip(b) == clip for (clip, _, _), b in zip(rendered, back)) >= 21
    fb = mel_filters()
    inner = fb.sum(0)[(fb.sum(0) > 0).nonzero()[5] : (fb.sum(0) > 0).nonzero()[-40]]
    assert torch.allclose(inner, torch.ones_like(inner), atol=1e-5)  # triangles sum to one between centres


def test_vague_captions_leave_out_one_word_of_one_note_and_keep_every_sound():
    plain, vague = TonesDataset(length=300, seed=2), TonesDataset(length=300, seed=2, vague=0.5)
    changed = {"pitch": 0, "kind": 0}
    for i in range(300):
        (clip, caption), (same, loose) = plain.clip_and_caption(i), vague.clip_and_caption(i)
        assert same == clip
        if loose == caption:
            continue
        words, fewer = caption.split(), loose.split()
        if "sound" in loose or "sounds" in loose:  # the timbre word(s) became "sound"
            changed["kind"] += 1
            assert len(fewer) <= len(words) and parse_caption(caption).parts != ()
        else:  # one register word is gone, nothing else
            changed["pitch"] += 1
            assert len(fewer) == len(words) - 1 and all(w in words for w in fewer)
    notes = sum(any(p.pitch and not p.chord for p in plain.clip_and_caption(i)[0].parts) for i in range(300))
    assert 0.35 * notes < sum(changed.values()) < 0.65 * notes and min(changed.values()) > 0.15 * notes
    assert torch.equal(plain.waveform(7), vague.waveform(7)) and plain[7][1] == plain.clip_and_caption(7)[1]
    assert vague.cache_params() != plain.cache_params()
    with pytest.raises(ValueError, match="vague only in the train split"):
        TonesDataset(split="heldout", vague=0.3)
    with pytest.raises(ValueError, match="0 ≤ vague ≤ 1"):
        TonesDataset(vague=1.5)


def test_bad_input():
    with pytest.raises(ValueError, match="heldout"):
        TonesDataset(split="validation")
    with pytest.raises(ValueError, match="size = 64"):
        TonesDataset(size=32)
    with pytest.raises(ValueError, match="waveforms"):
        waveform_to_image(torch.zeros(2, 100))
    with pytest.raises(ValueError, match="mono waveform"):
        read_clip(torch.zeros(2, 8000))


def test_a_frequency_axis_given_as_whole_numbers_finds_the_same_cache_file():
    """`--set data.options.mel_break_hz=1` parses as the integer 1; the recipe writes 1.0: one axis, one
    cache file (its name hashes the key's JSON, where 1 and 1.0 differ)."""
    whole = TonesDataset(length=8, mel_break_hz=1, f_min=150)
    decimal = TonesDataset(length=8, mel_break_hz=1.0, f_min=150.0)
    other = TonesDataset(length=8, mel_break_hz=2, f_min=150)
    assert cache_file("c", cache_key("tones", whole)) == cache_file("c", cache_key("tones", decimal))
    assert cache_file("c", cache_key("tones", whole)) != cache_file("c", cache_key("tones", other))
