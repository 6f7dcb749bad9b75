"""Sound as a picture: waveform ↔ log-mel spectrogram image, inverted with Griffin-Lim.

A clip of ``CLIP_SAMPLES`` samples at ``SAMPLE_RATE`` Hz becomes a [1, N_MELS, FRAMES] image in
[-1, 1]: rows are mel bands (row 0 the highest, so a drawn spectrogram has low notes at the bottom),
columns are STFT frames, and the value is the band's magnitude in dB mapped linearly from
[DB_FLOOR, DB_TOP] to [-1, 1]. The dB scale is absolute (a full-scale sine reads 0 dB), so loudness is
kept. Going back, the mel magnitudes are spread onto the STFT bins by non-negative least squares
(multiplicative updates, Lee & Seung 2001) and given phases by fast Griffin-Lim (Griffin & Lim 1984;
Perraudin et al. 2013, momentum 0.99). Everything is torch on the CPU; no audio library is needed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

SAMPLE_RATE = 8000  # Hz
CLIP_SAMPLES = 8000  # one second
N_FFT = 512  # 64 ms window: 15.6 Hz between STFT bins
HOP = 125  # 15.6 ms between frames
N_MELS = 64
FRAMES = CLIP_SAMPLES // HOP  # 64 (the centred STFT's 65th frame, at t = 1 s, is dropped)
F_MIN = 40.0  # Hz: the lowest mel filter's lower edge
MEL_BREAK_HZ = 700.0  # HTK's corner: bands evenly spaced in log(1 + f / corner); a low corner ≈ log-frequency
DB_FLOOR, DB_TOP = -75.0, 5.0  # the dB range mapped onto [-1, 1]
GRIFFIN_LIM_ITERS = 48
LIMITER_WINDOW_S = 0.01  # seconds either side over which the limiter's gain dips and recovers


@dataclass(frozen=True)
class SpectrogramFormat:
    """What makes a 1-channel image [1, n_mels, frames] a sound: the sample rate, the STFT, the mel bands
    and the dB range of the pixels. A clip of F frames is F·hop samples long."""

    sample_rate: int = SAMPLE_RATE  # Hz
    n_fft: int = N_FFT  # STFT window (samples)
    hop: int = HOP  # samples between frames
    n_mels: int = N_MELS  # mel bands: the image's rows
    f_min: float = F_MIN  # Hz
    mel_break_hz: float = MEL_BREAK_HZ  # Hz: bands are even in log(1 + f / this); 700 is HTK's mel scale
    db_floor: float = DB_FLOOR  # the dB of pixel value -1 (silence below it)
    db_top: float = DB_TOP  # the dB of pixel value +1
    griffin_lim_iters: int = GRIFFIN_LIM_ITERS

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # a hand-edited pipeline.json: numbers of the right kind
            value, whole = getattr(self, field.name), type(field.default) is int
            kind = int if whole else int | float
            if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
                raise ValueError(
                    f"audio {field.name} must be a{'n integer' if whole else ' number'}, got {value!r}"
                )
        c = self
        ranges = {  # field -> (ok, the range it must lie in)
            "sample_rate": (8000 <= c.sample_rate <= 192_000, "[8000, 192000] Hz"),  # what every player takes
            "n_fft": (16 <= c.n_fft <= 8192, "[16, 8192]"),
            "hop": (1 <= c.hop <= c.n_fft, f"[1, n_fft = {c.n_fft}]"),
            "n_mels": (1 <= c.n_mels <= c.n_fft // 2, f"[1, n_fft / 2 = {c.n_fft // 2}]"),
            "f_min": (0 <= c.f_min < c.sample_rate / 2, f"[0, sample_rate / 2 = {c.sample_rate / 2:g}) Hz"),
            "mel_break_hz": (1 <= c.mel_break_hz <= 100_000, "[1, 100000] Hz"),
            "db_floor": (-300 <= c.db_floor < c.db_top, f"[-300, db_top = {c.db_top:g})"),
            "db_top": (c.db_top <= 100, "(db_floor, 100]"),
            "griffin_lim_iters": (1 <= c.griffin_lim_iters <= 1000, "[1, 1000]"),
        }
        for name, (ok, limits) in ranges.items():
            if not ok:
                raise ValueError(f"audio {name} must be in {limits}, got {getattr(c, name)!r}")

    def seconds(self, frames: int) -> float:
        """The length of a clip of ``frames`` frames."""
        return frames * self.hop / self.sample_rate


SPECTROGRAM = SpectrogramFormat()  # the format of the tones data (and the default everywhere here)


def hz_to_mel(f: Tensor | float, corner: float = MEL_BREAK_HZ) -> Tensor:
    """The mel scale 2595·log10(1 + f/corner): HTK's at corner 700 Hz; a low corner makes it nearly
    log-frequency, where a change of pitch moves a note's harmonics without changing their spacing."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / corner)


def mel_to_hz(m: Tensor, corner: float = MEL_BREAK_HZ) -> Tensor:
    return corner * (10.0 ** (m / 2595.0) - 1.0)


@cache
def mel_filters(
    n_mels: int = N_MELS,
    n_fft: int = N_FFT,
    sample_rate: int = SAMPLE_RATE,
    f_min: float = F_MIN,
    corner: float = MEL_BREAK_HZ,
) -> Tensor:
    """Triangular filters [n_mels, n_fft/2 + 1] (peak 1) with centres evenly spaced in mel from f_min to
    Nyquist; neighbouring triangles sum to 1 between their centres."""
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # [K]
    edges = _mel_edges(n_mels, sample_rate, f_min, corner)  # [M + 2]
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # [M, 1]
    rising, falling = (freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)
    return torch.minimum(rising, falling).clamp(min=0).float()  # [M, K]


def _mel_edges(n_mels: int, sample_rate: int, f_min: float, corner: float) -> Tensor:
    """n_mels + 2 frequencies (Hz) evenly spaced in mel from f_min to Nyquist, [n_mels + 2] float64."""
    lo, hi = float(hz_to_mel(f_min, corner)), float(hz_to_mel(sample_rate / 2, corner))
    return mel_to_hz(torch.linspace(lo, hi, n_mels + 2, dtype=torch.float64), corner)


def _filters(fmt: SpectrogramFormat) -> Tensor:
    return mel_filters(fmt.n_mels, fmt.n_fft, fmt.sample_rate, fmt.f_min, fmt.mel_break_hz)


def band_frequencies(n_mels: int = N_MELS, fmt: SpectrogramFormat = SPECTROGRAM) -> Tensor:
    """The centre frequency (Hz) of each mel band, lowest first, [n_mels]."""
    return _mel_edges(n_mels, fmt.sample_rate, fmt.f_min, fmt.mel_break_hz)[1:-1].float()


def _window(fmt: SpectrogramFormat = SPECTROGRAM) -> Tensor:
    return torch.hann_window(fmt.n_fft, dtype=torch.float32)


def stft_magnitude(wave: Tensor, fmt: SpectrogramFormat = SPECTROGRAM) -> Tensor:
    """Waveforms [B, S] → STFT magnitudes [B, K, S // hop], scaled so a unit sine peaks at 1 (the centred
    STFT's last frame, at the clip's end, is dropped)."""
    window = _window(fmt)
    spec = torch.stft(wave.float(), fmt.n_fft, fmt.hop, window=window, center=True, return_complex=True)
    return spec[..., : wave.shape[-1] // fmt.hop].abs() / (window.sum() / 2)  # [B, K, T]


def waveform_to_image(wave: Tensor, fmt: SpectrogramFormat = SPECTROGRAM) -> Tensor:
    """Waveforms [B, CLIP_SAMPLES] in [-1, 1] → log-mel images [B, 1, N_MELS, FRAMES] in [-1, 1] (any
    length that is a whole number of hops with another format)."""
    length = CLIP_SAMPLES if fmt == SPECTROGRAM else None
    if wave.ndim != 2 or (length is not None and wave.shape[1] != length) or wave.shape[1] % fmt.hop:
        raise ValueError(f"expected waveforms [B, {length or f'k·{fmt.hop}'}], got {tuple(wave.shape)}")
    return mel_to_image(_filters(fmt) @ stft_magnitude(wave, fmt), fmt)


def mel_to_image(mel: Tensor, fmt: SpectrogramFormat = SPECTROGRAM) -> Tensor:
    """Mel magnitudes [B, M, T] (lowest band first) → log-mel images [B, 1, M, T] in [-1, 1]."""
    db = 20 * torch.log10(mel.clamp(min=1e-8))
    image = ((db - fmt.db_floor) / (fmt.db_top - fmt.db_floor) * 2 - 1).clamp(-1, 1)
    return image.flip(1)[:, None]  # [B, 1, M, T], row 0 = highest band


def reformat(image: Tensor, source: SpectrogramFormat, target: SpectrogramFormat) -> Tensor:
    """Log-mel images [B, 1, M, T] in ``source`` → the same sounds' images in ``target`` [B, 1, M', T]: the
    bands are spread onto the STFT bins (``mel_to_linear``) and summed into the target's bands; no phase
    is needed, so both sides of a comparison can be read in one format. The STFTs must agree."""
    stft = ("sample_rate", "n_fft", "hop")
    if any(getattr(source, f) != getattr(target, f) for f in stft):
        raise ValueError(f"cannot reformat spectrograms between STFTs: {', '.join(stft)} must agree")
    if source == target:
        return image
    return mel_to_image(_filters(target) @ mel_to_linear(image_to_mel(image, source), fmt=source), target)


def image_to_mel(image: Tensor, fmt: SpectrogramFormat = SPECTROGRAM) -> Tensor:
    """Log-mel images [B, 1, n_mels, T] in [-1, 1] → mel magnitudes [B, n_mels, T] (lowest band first);
    the floor value (-1) maps to silence."""
    if image.ndim != 4 or image.shape[1:3] != (1, fmt.n_mels) or image.shape[-1] < 1:
        raise ValueError(f"expected spectrograms [B, 1, {fmt.n_mels}, frames], got {tuple(image.shape)}")
    x = image.float().clamp(-1, 1)[:, 0].flip(1)  # [B, M, T]
    db = (x + 1) / 2 * (fmt.db_top - fmt.db_floor) + fmt.db_floor
    return torch.where(x > -1 + 1e-3, 10 ** (db / 20), torch.zeros_like(db))


def mel_to_linear(mel: Tensor, iters: int = 100, fmt: SpectrogramFormat = SPECTROGRAM) -> Tensor:
    """Mel magnitudes [B, M, T] → non-negative STFT magnitudes [B, K, T] with filters @ S ≈ mel
    (multiplicative updates for non-negative least squares, started from the filters' transpose)."""
    fb = _filters(fmt)  # [M, K]
    lin = fb.T @ mel  # [B, K, T]
    numerator = fb.T @ mel
    for _ in range(iters):
        lin = lin * numerator / (fb.T @ (fb @ lin) + 1e-10)
    return lin


def griffin_lim(
    magnitude: Tensor,
    iters: int = GRIFFIN_LIM_ITERS,
    seed: int = 0,
    momentum: float = 0.99,
    fmt: SpectrogramFormat = SPECTROGRAM,
) -> Tensor:
    """STFT magnitudes [B, K, T] (unit-sine scale) → waveforms [B, T·hop] (fast Griffin-Lim); the random
    starting phases come from a generator seeded ``seed``."""
    window, length = _window(fmt), magnitude.shape[-1] * fmt.hop
    stft = dict(n_fft=fmt.n_fft, hop_length=fmt.hop, window=window)
    mag = torch.cat([magnitude, magnitude[..., -1:]], -1) * (window.sum() / 2)  # [B, K, T + 1]: + the dropped
    g = torch.Generator().manual_seed(seed)
    angles = torch.polar(torch.ones_like(mag), 2 * math.pi * torch.rand(mag.shape, generator=g))
    previous = torch.zeros_like(angles)
    for _ in range(iters):
        wave = torch.istft(mag * angles, length=length, **stft)
        rebuilt = torch.stft(wave, center=True, return_complex=True, **stft)
        accelerated = rebuilt - momentum / (1 + momentum) * previous
        previous = rebuilt
        angles = accelerated / accelerated.abs().clamp(min=1e-8)
    wave = limit(torch.istft(mag * angles, length=length, **stft), fmt.sample_rate)  # [B, T·hop]
    return wave.clamp(-1, 1)  # rounds off float error


def limit(wave: Tensor, sample_rate: int, window_s: float = LIMITER_WINDOW_S) -> Tensor:
    """Waveforms [B, N] → the same within [-1, 1] by a look-ahead limiter: where a sample is over full
    scale the gain dips smoothly around it (the minimum of the needed gains over ±w, averaged over ±w, is
    never above the gain any sample in reach needs), so a loud clip keeps its level and timbre; clipping
    instead squares off a loud sine's peaks, adding the odd harmonics of a buzz."""
    w = max(1, round(window_s * sample_rate))
    need = 1 / wave.abs().clamp(min=1.0)[:, None]  # [B, 1, N] ≤ 1
    lowest = -F.max_pool1d(-need, 2 * w + 1, stride=1, padding=w)
    gain = F.avg_pool1d(F.pad(lowest, (w, w), mode="replicate"), 2 * w + 1, stride=1)  # [B, 1, N]
    return wave * gain[:, 0]


def image_to_waveform(image: Tensor, seed: int = 0, fmt: SpectrogramFormat = SPECTROGRAM) -> Tensor:
    """Log-mel images [B, 1, n_mels, T] in [-1, 1] → waveforms [B, T·hop] in [-1, 1]."""
    return griffin_lim(mel_to_linear(image_to_mel(image, fmt), fmt=fmt), fmt.griffin_lim_iters, seed, fmt=fmt)
