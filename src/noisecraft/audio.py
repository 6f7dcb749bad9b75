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

import math
from functools import cache

import torch
from torch import Tensor

SAMPLE_RATE = 8000  # Hz
CLIP_SAMPLES = 8000  # one second
N_FFT = 512  # 64 ms window: 15.6 Hz between STFT bins
HOP = 125  # 15.6 ms between frames
N_MELS = 64
FRAMES = CLIP_SAMPLES // HOP  # 64 (the centred STFT's 65th frame, at t = 1 s, is dropped)
DB_FLOOR, DB_TOP = -75.0, 5.0  # the dB range mapped onto [-1, 1]
GRIFFIN_LIM_ITERS = 48


def hz_to_mel(f: Tensor | float) -> Tensor:
    """The HTK mel scale: 2595·log10(1 + f/700)."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@cache
def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Triangular filters [n_mels, n_fft/2 + 1] (peak 1) with centres evenly spaced in mel from 40 Hz
    to Nyquist; neighbouring triangles sum to 1 between their centres."""
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # [K]
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(40.0)), float(hz_to_mel(sample_rate / 2)), n_mels + 2,
                                     dtype=torch.float64))  # [M + 2]  # fmt: skip
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # [M, 1]
    rising, falling = (freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)
    return torch.minimum(rising, falling).clamp(min=0).float()  # [M, K]


def band_frequencies(n_mels: int = N_MELS) -> Tensor:
    """The centre frequency (Hz) of each mel band, lowest first, [n_mels]."""
    return mel_to_hz(torch.linspace(float(hz_to_mel(40.0)), float(hz_to_mel(SAMPLE_RATE / 2)), n_mels + 2,
                                    dtype=torch.float64))[1:-1].float()  # fmt: skip


def _window() -> Tensor:
    return torch.hann_window(N_FFT, dtype=torch.float32)


def stft_magnitude(wave: Tensor) -> Tensor:
    """Waveforms [B, CLIP_SAMPLES] → STFT magnitudes [B, K, FRAMES], scaled so a unit sine peaks at 1."""
    spec = torch.stft(wave.float(), N_FFT, HOP, window=_window(), center=True, return_complex=True)
    return spec[..., :FRAMES].abs() / (_window().sum() / 2)  # [B, K, FRAMES]


def waveform_to_image(wave: Tensor) -> Tensor:
    """Waveforms [B, CLIP_SAMPLES] in [-1, 1] → log-mel images [B, 1, N_MELS, FRAMES] in [-1, 1]."""
    if wave.ndim != 2 or wave.shape[1] != CLIP_SAMPLES:
        raise ValueError(f"expected waveforms [B, {CLIP_SAMPLES}], got {tuple(wave.shape)}")
    mel = mel_filters() @ stft_magnitude(wave)  # [B, M, T]
    db = 20 * torch.log10(mel.clamp(min=1e-8))
    image = ((db - DB_FLOOR) / (DB_TOP - DB_FLOOR) * 2 - 1).clamp(-1, 1)
    return image.flip(1)[:, None]  # [B, 1, M, T], row 0 = highest band


def image_to_mel(image: Tensor) -> Tensor:
    """Log-mel images [B, 1, N_MELS, FRAMES] in [-1, 1] → mel magnitudes [B, N_MELS, FRAMES] (lowest band
    first); the floor value (-1) maps to silence."""
    if image.ndim != 4 or image.shape[1:] != (1, N_MELS, FRAMES):
        raise ValueError(f"expected spectrograms [B, 1, {N_MELS}, {FRAMES}], got {tuple(image.shape)}")
    x = image.float().clamp(-1, 1)[:, 0].flip(1)  # [B, M, T]
    db = (x + 1) / 2 * (DB_TOP - DB_FLOOR) + DB_FLOOR
    return torch.where(x > -1 + 1e-3, 10 ** (db / 20), torch.zeros_like(db))


def mel_to_linear(mel: Tensor, iters: int = 100) -> Tensor:
    """Mel magnitudes [B, M, T] → non-negative STFT magnitudes [B, K, T] with filters @ S ≈ mel
    (multiplicative updates for non-negative least squares, started from the filters' transpose)."""
    fb = mel_filters()  # [M, K]
    lin = fb.T @ mel  # [B, K, T]
    numerator = fb.T @ mel
    for _ in range(iters):
        lin = lin * numerator / (fb.T @ (fb @ lin) + 1e-10)
    return lin


def griffin_lim(
    magnitude: Tensor, iters: int = GRIFFIN_LIM_ITERS, seed: int = 0, momentum: float = 0.99
) -> Tensor:
    """STFT magnitudes [B, K, FRAMES] (unit-sine scale) → waveforms [B, CLIP_SAMPLES] (fast Griffin-Lim)."""
    scale = _window().sum() / 2
    mag = torch.cat([magnitude, magnitude[..., -1:]], -1) * scale  # [B, K, FRAMES + 1]: the dropped frame
    g = torch.Generator().manual_seed(seed)
    angles = torch.polar(torch.ones_like(mag), 2 * math.pi * torch.rand(mag.shape, generator=g))
    previous = torch.zeros_like(angles)
    for _ in range(iters):
        wave = torch.istft(mag * angles, N_FFT, HOP, window=_window(), length=CLIP_SAMPLES)
        rebuilt = torch.stft(wave, N_FFT, HOP, window=_window(), center=True, return_complex=True)
        accelerated = rebuilt - momentum / (1 + momentum) * previous
        previous = rebuilt
        angles = accelerated / accelerated.abs().clamp(min=1e-8)
    return torch.istft(mag * angles, N_FFT, HOP, window=_window(), length=CLIP_SAMPLES).clamp(-1, 1)


def image_to_waveform(image: Tensor, seed: int = 0) -> Tensor:
    """Log-mel images [B, 1, N_MELS, FRAMES] in [-1, 1] → waveforms [B, CLIP_SAMPLES] in [-1, 1]."""
    return griffin_lim(mel_to_linear(image_to_mel(image)), seed=seed)
