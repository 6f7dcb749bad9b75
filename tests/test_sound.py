"""Sound models end to end: the audio setting, WAV files (written, read as hostile input, regenerated),
spectrogram pictures and strips, the native API's WAVs and `explain --sound`."""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import wave

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline, make_tiny_sound_pipeline
from PIL import Image

from noisecraft.audio import (
    CLIP_SAMPLES,
    SPECTROGRAM,
    SpectrogramFormat,
    band_frequencies,
    hz_to_mel,
    limit,
    reformat,
    waveform_to_image,
)
from noisecraft.cli import main
from noisecraft.components import ComponentError
from noisecraft.data.tones import TonesDataset
from noisecraft.images import read_png_metadata, to_pil
from noisecraft.model import ModelSettings, read_settings, write_settings
from noisecraft.sound_files import (
    clip_waveform,
    parse_wav,
    read_wav,
    spectrogram_picture,
    wav_bytes,
    wav_parameters,
)
from noisecraft.training import load_config
from noisecraft.training.trainer import model_settings


def test_audio_setting_round_trips_and_is_checked(tmp_path):
    sound = make_tiny_sound_pipeline().config
    write_settings(sound, tmp_path / "a")
    assert read_settings(tmp_path / "a") == sound and sound.modality == "audio"
    write_settings(ModelSettings(), tmp_path / "b")  # a picture model's file has no audio entry
    assert "audio" not in json.loads((tmp_path / "b" / "pipeline.json").read_text())
    assert read_settings(tmp_path / "b").modality == "image"
    bad = [("hop", 0), ("sample_rate", 4000), ("sample_rate", True), ("n_fft", 10**9), ("db_floor", 10.0)]
    good = json.loads((tmp_path / "a" / "pipeline.json").read_text())
    for key, value in [*bad, ("nope", 1)]:
        values = json.loads(json.dumps(good))
        values["audio"][key] = value
        (tmp_path / "a" / "pipeline.json").write_text(json.dumps(values))
        with pytest.raises(ComponentError, match=key):
            read_settings(tmp_path / "a")
    with pytest.raises(ValueError, match="1-channel spectrograms with 16 mel bands"):
        ModelSettings(image_size=16, channels=3, audio=sound.audio)


def test_export_records_the_datasets_own_format():
    tones = load_config("configs/tones64.toml")
    audio = model_settings(tones, "t", (1, 64, 64)).audio
    assert audio == TonesDataset(**tones.data.options).audio != SPECTROGRAM
    assert (audio.f_min, audio.mel_break_hz) == (150.0, 1.0)
    assert model_settings(load_config("configs/shapes32.toml"), "s", (3, 32, 32)).audio is None


def test_a_non_default_format_is_used():
    fmt = SpectrogramFormat(sample_rate=16000, n_fft=256, hop=16, n_mels=16, f_min=20.0)
    t = torch.arange(512) / 16000
    image = waveform_to_image(torch.sin(2 * torch.pi * 1000 * t)[None], fmt)  # [1, 1, 16, 32]
    assert image.shape == (1, 1, 16, 32)
    loud = image[0, 0, :, 8:24].mean(1)  # the loudest row is the band whose centre is nearest 1 kHz
    centres = band_frequencies(16, fmt)  # lowest first; row 0 is the highest
    assert int(loud.argmax()) == 15 - int((centres - 1000).abs().argmin())
    wave_back = clip_waveform(to_pil(image)[0], seed=0, fmt=fmt)
    assert wave_back.shape == (512,)  # 32 frames of 16 samples


def _peak_rows(fmt: SpectrogramFormat, freqs: tuple[float, ...]) -> list[int]:
    """The image row where each sine of ``freqs`` is loudest."""
    t = torch.arange(CLIP_SAMPLES) / SPECTROGRAM.sample_rate
    return [int(waveform_to_image(0.3 * torch.sin(2 * torch.pi * f * t)[None], fmt)[0, 0].mean(1).argmax())
            for f in freqs]  # fmt: skip


def test_a_low_corner_moves_a_note_without_stretching_its_partials():
    """A bell two octaves up: its root and its 2.76 partial move by nearly the same number of rows on the
    log-like axis (corner 50 Hz), but on HTK's mel axis the partial moves twice as far as the root."""

    def stretch(fmt: SpectrogramFormat) -> int:  # rows the partial moves beyond the rows the root moves
        low_root, low_partial, high_root, high_partial = _peak_rows(fmt, (196.0, 541.0, 784.0, 2164.0))
        return (low_partial - high_partial) - (low_root - high_root)

    assert abs(stretch(TonesDataset(f_min=150.0, mel_break_hz=50.0).audio)) <= 3
    assert stretch(SPECTROGRAM) >= 10


def test_on_the_log_axis_a_timbre_is_the_same_pattern_in_every_register():
    """Where a partial sits above its root, in bands: on a log axis (corner 1 Hz) a bell's 2.76 partial is
    the same distance above G3, G4 and G5; at the recipe's 50 Hz corner the middle bell's distance, moved
    an octave down, lies nearer a low square wave's third harmonic than the low bell's own partial."""

    def rows_above(fmt: SpectrogramFormat, root: float, ratio: float) -> float:
        band = (hz_to_mel(fmt.sample_rate / 2, fmt.mel_break_hz) - hz_to_mel(fmt.f_min, fmt.mel_break_hz))
        band = band / (fmt.n_mels + 1)  # the spacing of the band centres, in mel
        return float((hz_to_mel(ratio * root, fmt.mel_break_hz) - hz_to_mel(root, fmt.mel_break_hz)) / band)

    log, knee = (TonesDataset(f_min=150.0, mel_break_hz=corner).audio for corner in (1.0, 50.0))
    bells = [rows_above(log, root, 2.76) for root in (196.0, 392.0, 784.0)]
    assert max(bells) - min(bells) < 0.1
    assert rows_above(log, 196.0, 3.0) - rows_above(log, 196.0, 2.76) > 1.5  # square and bell: apart
    middle_bell = rows_above(knee, 392.0, 2.76)
    assert abs(middle_bell - rows_above(knee, 196.0, 3.0)) < abs(middle_bell - rows_above(knee, 196.0, 2.76))


def test_tones_axis_options_change_the_pixels_the_cache_key_and_are_checked():
    default, log = TonesDataset(length=4), TonesDataset(length=4, f_min=150.0, mel_break_hz=50.0)
    # the default axis adds nothing to the cache key
    assert default.audio == SPECTROGRAM and "audio" not in default.cache_params()
    assert log.cache_params()["audio"] == {"f_min": 150.0, "mel_break_hz": 50.0}
    assert (default[0][0] - log[0][0]).abs().mean() > 0.05 and default[0][1] == log[0][1]
    with pytest.raises(ValueError, match="mel_break_hz must be in"):
        TonesDataset(mel_break_hz=0.0)


def test_reformat_reads_one_formats_spectrograms_in_another():
    data = TonesDataset(length=16, seed=5, split="heldout")
    waves = torch.stack([data.waveform(i) for i in range(16)])
    log = TonesDataset(f_min=150.0, mel_break_hz=50.0).audio
    direct, other = waveform_to_image(waves), waveform_to_image(waves, log)
    assert (
        (reformat(other, log, SPECTROGRAM) - direct).abs().mean() < 0.03 < 0.1 < (other - direct).abs().mean()
    )
    assert reformat(direct, SPECTROGRAM, SPECTROGRAM) is direct
    with pytest.raises(ValueError, match="STFTs"):
        reformat(direct, SPECTROGRAM, SpectrogramFormat(hop=100))


def _third_harmonic_db(x: torch.Tensor, f: int = 220) -> float:
    mag = np.abs(np.fft.rfft(x.double().numpy() * np.hanning(len(x))))  # 1-Hz bins over one second
    return float(20 * np.log10(mag[3 * f] / mag[f]))


def test_sound_louder_than_full_scale_is_limited_not_clipped():
    t = torch.arange(8000) / 8000
    loud, quiet = 1.5 * torch.sin(2 * torch.pi * 220 * t), 0.5 * torch.sin(2 * torch.pi * 220 * t)
    spiked = quiet.clone()
    spiked[4000] = 3.0
    out = limit(torch.stack([loud, quiet, spiked]), 8000)
    assert out.abs().amax(-1).tolist() == pytest.approx([1.0, 0.5, 1.0], abs=1e-5)
    assert torch.equal(out[1], quiet)  # within full scale: untouched
    far = torch.cat([torch.arange(3800), torch.arange(4201, 8000)])  # over 2 × 10 ms from the spike
    assert torch.equal(out[2, far], quiet[far])
    assert _third_harmonic_db(out[0]) < -80 < -20 < _third_harmonic_db(loud.clamp(-1, 1))
    rough = 3 * torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
    assert limit(rough, 8000).abs().max() <= 1 + 1e-5 and limit(rough, 8000).abs().max() > 0.9


def test_wav_bytes_are_a_standard_wav_with_our_parameters():
    samples = torch.linspace(-1, 1, 101)
    data = wav_bytes(samples, 2000, {"prompt": "a beep", "seed": 3}, "a beep\nSteps: 4, Seed: 3, Size: 16x16")
    with wave.open(io.BytesIO(data)) as w:  # the standard library's reader
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 2000, 101)
        frames = np.frombuffer(w.readframes(101), "<i2")
    assert frames[0] == -32767 and frames[-1] == 32767 and frames[50] == 0
    parsed = parse_wav(data)
    assert parsed.metadata == {"prompt": "a beep", "seed": 3} and parsed.comment.startswith("a beep\nSteps")
    assert np.array_equal(parsed.samples, frames)


def _chunked(fmt: bytes, *extra: bytes) -> bytes:
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"".join(extra)
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "no RIFF/WAVE header"),
        (b"RIFF\x10\0\0\0WAVE", "no fmt or data chunk"),
        (_chunked(struct.pack("<HHIIHH", 1, 2, 8000, 32000, 4, 16), b"data\0\0\0\0"), "16-bit PCM mono"),
        (_chunked(struct.pack("<HHIIHH", 3, 1, 8000, 32000, 4, 32), b"data\0\0\0\0"), "16-bit PCM mono"),
        (_chunked(struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16), b"data\xff\xff\xff\x7f"), "past the end"),
        (_chunked(struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16), b"data\0\0\0\0", b"ncft\2\0\0\0{x"),
         "corrupt generation parameters"),
        (_chunked(struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16), b"data\0\0\0\0", b"ncft\2\0\0\0[]"),
         "not a JSON object"),
    ],
)  # fmt: skip
def test_bad_wavs_are_refused_with_one_message(tmp_path, data, why):
    path = tmp_path / "bad.wav"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=why):
        read_wav(path)


def test_oversized_and_special_files_are_refused(tmp_path):
    path = tmp_path / "big.wav"
    path.write_bytes(wav_bytes(torch.zeros(4000), 8000))
    with pytest.raises(ValueError, match="more than a WAV may be"):
        read_wav(path, max_bytes=1000)
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        read_wav(fifo)
    with pytest.raises(ValueError, match="carries no generation parameters"):
        wav_parameters(path)


def test_generate_writes_wavs_pictures_and_reproduces_them(tiny_sound_dir, tmp_path):
    args = ["generate", "a loud drum hit", "--model", str(tiny_sound_dir), "--seed", "4", "--quiet"]
    assert main([*args, "--num", "2", "--out", str(tmp_path / "a"), "--show-steps"]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    first = tmp_path / "a" / "000-a-loud-drum-hit-s4.wav"
    assert first.read_bytes() == (tmp_path / "b" / first.name).read_bytes()  # same seed, same bytes
    second = (tmp_path / "a" / "001-a-loud-drum-hit-s5.wav").read_bytes()
    assert second != first.read_bytes()
    with wave.open(str(first)) as w:  # the model's own format: 16 frames × 64 samples at 8 kHz
        assert (w.getframerate(), w.getnframes()) == (8000, 1024)
    meta = wav_parameters(first)
    assert meta["prompt"] == "a loud drum hit" and meta["seed"] == 4
    picture = tmp_path / "a" / "000-a-loud-drum-hit-s4.png"
    assert read_png_metadata(picture) == meta
    with (
        Image.open(picture) as image,
        Image.open(tmp_path / "a" / "000-a-loud-drum-hit-s4-steps.png") as strip,
    ):
        assert image.mode == "RGB" and image.width > 64  # enlarged, with axes
        for shown in (image, strip):
            rgb = np.asarray(shown.convert("RGB")).astype(int)
            assert (np.abs(rgb[..., 0] - rgb[..., 2]) > 40).mean() > 0.05  # coloured, not grey
    assert main(["generate", "--from-wav", str(first), "--model", str(tiny_sound_dir), "--quiet",
                 "--out", str(tmp_path / "c")]) == 0  # fmt: skip
    assert (tmp_path / "c" / first.name).read_bytes() == first.read_bytes()


def test_from_wav_bad_input_is_one_line_and_exit_2(tiny_sound_dir, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\xff\xff\xff\x7fWAVEdata\xff\xff\xff\x7f")
    png = tmp_path / "x.png"
    Image.new("L", (4, 4)).save(png)
    for path in (bad, png, tmp_path / "missing.wav"):
        code = main(["generate", "--from-wav", str(path), "--model", str(tiny_sound_dir), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and str(path) in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_:  # one source of parameters at a time (argparse exits 2)
        main(["generate", "--from-wav", str(bad), "--from-png", str(png)])
    assert exit_.value.code == 2


def test_spectrogram_picture_axes_follow_the_format():
    image = to_pil(waveform_to_image(TonesDataset(length=1).waveform(0)[None]))[0]
    picture = spectrogram_picture(image, SPECTROGRAM)
    assert picture.size == (40 + 64 * 4 + 8, 64 * 4 + 22)
    two_seconds = spectrogram_picture(Image.new("L", (128, 64)), SPECTROGRAM, scale=2)
    assert two_seconds.width == 40 + 256 + 8


def test_native_api_returns_wavs_and_coloured_previews():
    httpx = pytest.importorskip("httpx")
    from server_helpers import decode_png, serve, sse_events

    from noisecraft.server.app import create_app
    from noisecraft.server.limits import Limits
    from noisecraft.server.models import ModelRegistry

    sound = make_tiny_sound_pipeline()
    models = ModelRegistry({"tiny": make_tiny_pipeline(), "sound": sound})
    with serve(create_app(models, Limits())) as url, httpx.Client(base_url=url, timeout=30) as client:
        info = {m["name"]: m for m in client.get("/v1/models").json()}
        assert info["sound"]["modality"] == "audio" and info["sound"]["sample_rate"] == 8000
        assert info["tiny"]["modality"] == "image" and info["tiny"]["sample_rate"] is None
        body = {"prompt": "a soft beep", "model": "sound", "seed": 9, "steps": 3}
        with client.stream("POST", "/v1/generate", json=body) as response:
            events = list(sse_events(response.iter_lines()))
    previews = [decode_png(d["preview"]) for k, d in events if k == "step"]
    assert len(previews) == 3 and all(p.mode == "RGB" and p.size == (16, 16) for p in previews)
    (out,) = events[-1][1]["images"]
    assert out["media_type"] == "audio/wav" and out["audio"].startswith("data:audio/wav;base64,")
    wav = parse_wav(base64.b64decode(out["audio"].partition(",")[2]))
    assert wav.metadata["seed"] == 9 and wav.sample_rate == 8000
    (image,) = sound.generate("a soft beep", seed=9, steps=3)  # the same clip, heard the same way
    expected = (clip_waveform(image, 9, sound.config.audio).clamp(-1, 1) * 32767).round().short().numpy()
    assert np.array_equal(wav.samples, expected)
    assert decode_png(out["image"]).mode == "RGB"  # the spectrogram picture


def test_explain_sound_draws_its_clip_as_the_shipped_model_hears():
    from noisecraft.explain import shipped_tones
    from noisecraft.model import find_model

    clips = shipped_tones(3)
    assert clips.audio == read_settings(find_model("tones")).audio  # its axis, not the default HTK one
    assert clips.audio != TonesDataset(length=1).audio
    assert clips.notes == "semitones" and clips.seed == 3


def test_explain_sound_draws_the_forward_process(tmp_path, capsys):
    assert main(["explain", "--sound", "--seed", "1", "--out", str(tmp_path)]) == 0
    assert "the clip: " in capsys.readouterr().err
    with Image.open(tmp_path / "forward-sound.png") as strip:
        rgb = np.asarray(strip.convert("RGB")).astype(int)
    cells = 10  # one per σ, noise taking over: the last cell is far busier than the first
    width = (rgb.shape[1] - 2) // cells
    busy = [
        np.abs(np.diff(rgb[20:, 2 + i * width : (i + 1) * width, 0], axis=1)).mean() for i in range(cells)
    ]
    assert busy[-1] > 3 * busy[0]
    with wave.open(str(tmp_path / "forward-sound.wav")) as w:
        assert w.getframerate() == 8000 and w.getnframes() == 10 * (8000 + 1600)
