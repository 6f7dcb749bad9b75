"""Sound out of a spectrogram model: WAV files that carry their generation parameters, and spectrogram
pictures a person can read.

A sound model (``ModelSettings.audio``) makes 1-channel log-mel images; ``clip_waveform`` hears one
with ``noisecraft.audio``'s Griffin-Lim, its random phases seeded by the clip's own seed, so the same
seed gives the same WAV bytes. A WAV is 16-bit PCM mono with two metadata chunks: ``LIST``/``INFO``
(``ICMT``: AUTOMATIC1111's parameters text, ``ISFT``: the software), which audio tools show, and
``ncft``: the same JSON a PNG's ``noisecraft`` chunk holds, which ``--from-wav`` reads back. Reading
treats the file as hostile: a regular file, at most ``MAX_WAV_BYTES``, every chunk inside the file.
"""

from __future__ import annotations

import io
import json
import os
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from . import __version__
from .audio import SPECTROGRAM, SpectrogramFormat, hz_to_mel, image_to_waveform
from .images import create_file, from_pil, label_font, open_regular, save_png, upscale

METADATA_CHUNK = b"ncft"  # our JSON generation parameters
MAX_WAV_BYTES = 32 * 1024 * 1024  # a WAV read from a file: 35 minutes of 8-kHz 16-bit mono
MAX_META_BYTES = 1024 * 1024  # a metadata chunk read back
MAX_CHUNKS = 1000
WAV_MEDIA_TYPE = "audio/wav"
COLOUR_MAP = "magma"  # dark = quiet, bright = loud


@dataclass(frozen=True)
class WavFile:
    """What ``read_wav`` found: the samples (int16, mono), the rate, and the metadata chunks."""

    samples: np.ndarray  # [S] int16
    sample_rate: int
    metadata: dict[str, Any] | None  # the ncft chunk's JSON
    comment: str | None  # LIST/INFO ICMT: A1111's parameters text


# -- hearing a spectrogram -------------------------------------------------------------------------


def clip_waveform(image: Image.Image, seed: int, fmt: SpectrogramFormat = SPECTROGRAM) -> Tensor:
    """A spectrogram image (8-bit grey, row 0 the highest band) → its waveform [frames·hop] in [-1, 1]."""
    pixels = from_pil(image, channels=1)  # [1, M, T] in [-1, 1]
    return image_to_waveform(pixels[None], seed=seed, fmt=fmt)[0]


# -- writing ---------------------------------------------------------------------------------------


def _chunk(kind: bytes, payload: bytes) -> bytes:
    """One RIFF chunk: id, little-endian size, payload, a pad byte when the size is odd."""
    return kind + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")


def wav_bytes(
    samples: Tensor, sample_rate: int, metadata: dict[str, Any] | None = None, parameters: str | None = None
) -> bytes:
    """A 16-bit PCM mono WAV of ``samples`` [S] in [-1, 1], with the metadata chunks when given."""
    pcm = (samples.detach().float().cpu().clamp(-1, 1) * 32767).round().to(torch.int16).numpy()
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)  # PCM, mono, 16-bit
    info = b"INFO" + _chunk(b"ISFT", f"noisecraft {__version__}\0".encode())
    if parameters is not None:
        info += _chunk(b"ICMT", parameters.encode("utf-8") + b"\0")
    body = b"WAVE" + _chunk(b"fmt ", fmt) + _chunk(b"data", pcm.astype("<i2").tobytes())
    body += _chunk(b"LIST", info)
    if metadata is not None:
        body += _chunk(METADATA_CHUNK, json.dumps(metadata, sort_keys=True).encode("utf-8"))
    return b"RIFF" + struct.pack("<I", len(body)) + body


def save_wav(
    samples: Tensor,
    path: str | os.PathLike,
    sample_rate: int,
    metadata: dict[str, Any] | None = None,
    parameters: str | None = None,
    exclusive: bool = False,
) -> Path:
    """Write ``wav_bytes`` to ``path`` (``exclusive``: FileExistsError rather than replace a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with create_file(path, exclusive) as f:
        f.write(wav_bytes(samples, sample_rate, metadata, parameters))
    return path


# -- reading (hostile input) -----------------------------------------------------------------------


def read_wav(path: str | os.PathLike, max_bytes: int = MAX_WAV_BYTES) -> WavFile:
    """A 16-bit PCM mono WAV file, checked chunk by chunk; ValueError naming the file otherwise."""
    with open_regular(path) as stream:
        size = os.fstat(stream.fileno()).st_size
        if size > max_bytes:
            raise ValueError(f"{path}: {size} bytes, more than a WAV may be here ({max_bytes})")
        data = stream.read(max_bytes + 1)
    try:
        return parse_wav(data)
    except ValueError as err:
        raise ValueError(f"{path}: not a readable WAV file ({err})") from None


def parse_wav(data: bytes) -> WavFile:
    """The bytes of a WAV file → WavFile; ValueError saying what is wrong."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("no RIFF/WAVE header")
    chunks: dict[bytes, bytes] = {}
    at = 12
    while at + 8 <= len(data) and len(chunks) < MAX_CHUNKS:
        kind, size = data[at : at + 4], struct.unpack("<I", data[at + 4 : at + 8])[0]
        if at + 8 + size > len(data):
            raise ValueError(f"the {kind!r} chunk runs past the end of the file")
        chunks.setdefault(kind, data[at + 8 : at + 8 + size])
        at += 8 + size + size % 2
    if b"fmt " not in chunks or b"data" not in chunks:
        raise ValueError("no fmt or data chunk")
    rate = _check_format(chunks[b"fmt "])
    samples = np.frombuffer(chunks[b"data"][: len(chunks[b"data"]) // 2 * 2], dtype="<i2").astype(np.int16)
    meta = _json_chunk(chunks.get(METADATA_CHUNK))
    return WavFile(samples, rate, meta, _info_comment(chunks.get(b"LIST")))


def _check_format(fmt: bytes) -> int:
    """The sample rate of a fmt chunk; ValueError unless it is 16-bit PCM mono."""
    if len(fmt) < 16:
        raise ValueError("a short fmt chunk")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag != 1 or channels != 1 or bits != 16:
        raise ValueError(f"{bits}-bit, {channels}-channel, format {tag}: only 16-bit PCM mono is read")
    if not 1 <= rate <= 384_000:
        raise ValueError(f"a sample rate of {rate} Hz")
    return rate


def _json_chunk(payload: bytes | None) -> dict[str, Any] | None:
    """Our metadata chunk's JSON object (None without one); ValueError when it is corrupt or too big."""
    if payload is None:
        return None
    if len(payload) > MAX_META_BYTES:
        raise ValueError(f"a metadata chunk of {len(payload)} bytes")
    try:
        meta = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"corrupt generation parameters ({type(err).__name__})") from None
    if not isinstance(meta, dict):
        raise ValueError("corrupt generation parameters (not a JSON object)")
    return meta


def _info_comment(payload: bytes | None) -> str | None:
    """The ICMT text of a LIST/INFO chunk, if there is one."""
    if payload is None or payload[:4] != b"INFO":
        return None
    at = 4
    while at + 8 <= len(payload):
        kind, size = payload[at : at + 4], struct.unpack("<I", payload[at + 4 : at + 8])[0]
        if kind == b"ICMT" and size <= MAX_META_BYTES:
            return payload[at + 8 : at + 8 + size].split(b"\0")[0].decode("utf-8", "replace")
        at += 8 + size + size % 2
    return None


def wav_parameters(path: str | os.PathLike) -> dict[str, Any]:
    """The generation parameters a WAV carries: our JSON chunk, else the ICMT parameters text translated;
    ValueError when it has neither."""
    from .infotext import metadata_from_infotext

    wav = read_wav(path)
    if wav.metadata is not None:
        return wav.metadata
    if wav.comment:
        return metadata_from_infotext(wav.comment)
    raise ValueError(f"{path}: carries no generation parameters")


# -- pictures --------------------------------------------------------------------------------------


@cache
def _colour_table(name: str = COLOUR_MAP) -> np.ndarray:
    """The colour map as 256 RGB rows, uint8 [256, 3]."""
    import matplotlib

    return (matplotlib.colormaps[name](np.arange(256))[:, :3] * 255).round().astype(np.uint8)


def colourise(image: Image.Image) -> Image.Image:
    """A grey spectrogram coloured by loudness (the colour map; silence is black)."""
    return Image.fromarray(_colour_table()[np.asarray(image.convert("L"))])


def spectrogram_picture(
    image: Image.Image, fmt: SpectrogramFormat = SPECTROGRAM, scale: int = 4
) -> Image.Image:
    """A spectrogram to look at: coloured, enlarged, time → in seconds below, frequency ↑ in Hz left."""
    cells = upscale(colourise(image), scale)
    left, bottom, font = 40, 16, label_font(10)
    picture = Image.new("RGB", (left + cells.width + 8, cells.height + bottom + 6), "white")
    picture.paste(cells, (left, 6))
    draw = ImageDraw.Draw(picture)
    for hz, y in _frequency_ticks(fmt, image.height, scale):
        draw.line([(left - 4, 6 + y), (left - 1, 6 + y)], fill="black")
        draw.text((left - 6, 6 + y), f"{hz / 1000:g}k" if hz >= 1000 else f"{hz:g}", fill="black",
                  font=font, anchor="rm")  # fmt: skip
    seconds = fmt.seconds(image.width)
    step = next(s for s in (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0) if seconds / s <= 6)
    for k in range(int(seconds / step + 1e-9) + 1):
        x = left + round(k * step / seconds * cells.width)
        draw.line([(x, 6 + cells.height), (x, 9 + cells.height)], fill="black")
        draw.text((x, 10 + cells.height), f"{k * step:g}s", fill="black", font=font, anchor="mt")
    draw.text((2, 0), "Hz", fill="black", font=font)
    return picture


def _frequency_ticks(fmt: SpectrogramFormat, rows: int, scale: int) -> list[tuple[float, int]]:
    """(Hz, y in pixels of the enlarged image) of round frequencies inside the mel bands' range."""
    corner = fmt.mel_break_hz
    lo, hi = float(hz_to_mel(fmt.f_min, corner)), float(hz_to_mel(fmt.sample_rate / 2, corner))
    ticks = []
    for hz in (100, 250, 500, 1000, 2000, 4000, 8000, 16000, 32000, 64000):
        band = (float(hz_to_mel(hz, corner)) - lo) / (hi - lo) * (rows + 1) - 1  # 0: the lowest band
        if 0 <= band <= rows - 1:
            ticks.append((float(hz), round((rows - 1 - band + 0.5) * scale)))
    return ticks


def png_bytes(image: Image.Image) -> bytes:
    """An image as PNG bytes (no metadata)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_clip(
    image: Image.Image,
    stem: Path,
    fmt: SpectrogramFormat,
    meta: dict[str, Any],
    parameters: str,
    written: list[Path],
    exclusive: bool = False,
) -> list[Path]:
    """``stem``.wav (heard with the clip's seed) and ``stem``.png (its spectrogram picture), both with
    the generation parameters; each path is appended to ``written`` as soon as it exists."""
    wave = clip_waveform(image, int(meta["seed"]), fmt)
    written.append(save_wav(wave, stem.with_suffix(".wav"), fmt.sample_rate, meta, parameters, exclusive))
    picture = spectrogram_picture(image, fmt)
    written.append(save_png(picture, stem.with_suffix(".png"), meta, parameters, exclusive))
    return written[-2:]
