"""Log-mel filterbank features in numpy: what the corpus writers store as ``data``.

Frames are cut without padding (Kaldi's ``snip_edges``): ``T = 1 + (n - window) // shift``
frames for ``n >= window`` samples, none for shorter audio. Each frame is windowed (periodic Hann) and
zero-padded to the next power of two; its power spectrum goes through a triangular mel
filterbank (HTK mel scale, unnormalised: torchaudio's ``melscale_fbanks`` defaults), then
``log(max(energy, floor))``.

>>> import numpy as np
>>> audio = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
>>> log_mel(audio, 16000).shape  # 1 s: 1 + (16000 - 400) // 160 frames
(98, 40)
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "log_mel",
    "mel_filterbank",
    "num_frames",
    "normalize_per_utterance",
    "utterance_features",
    "hz_to_mel",
    "mel_to_hz",
]


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: ``2595 * log10(1 + hz / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    num_freqs: int, sample_rate: int, num_mels: int, *, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """Triangular mel filters ``[num_freqs, num_mels]`` over the bins of an rfft (``n_fft // 2 + 1`` bins).

    The same construction as ``torchaudio.functional.melscale_fbanks(..., norm=None, mel_scale="htk")``:
    ``num_mels + 2`` points equally spaced in mel between ``f_min`` and ``f_max`` (default
    Nyquist); filter ``m`` rises from point ``m`` to ``m + 1`` and falls to ``m + 2``.

    >>> fb = mel_filterbank(257, 16000, 40)
    >>> fb.shape, bool((fb >= 0).all()), bool(fb.max() <= 1.0)
    ((257, 40), True, True)
    """
    if f_max is None:
        f_max = sample_rate / 2.0
    if not 0.0 <= f_min < f_max <= sample_rate / 2.0:
        raise ValueError(f"mel_filterbank: need 0 <= f_min < f_max <= {sample_rate / 2}, got {f_min}, {f_max}")
    all_freqs = np.linspace(0.0, sample_rate // 2, num_freqs)
    mel_pts = np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), num_mels + 2)
    f_pts = mel_to_hz(mel_pts)
    f_diff = f_pts[1:] - f_pts[:-1]  # [num_mels + 1]
    slopes = f_pts[None, :] - all_freqs[:, None]  # [num_freqs, num_mels + 2]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return np.maximum(0.0, np.minimum(down, up))


def num_frames(num_samples: int, sample_rate: int, *, frame_shift_ms: float = 10, window_ms: float = 25) -> int:
    """How many frames :func:`log_mel` makes of ``num_samples`` samples.

    >>> num_frames(16000, 16000), num_frames(400, 16000), num_frames(399, 16000)
    (98, 1, 0)
    """
    window, shift = _window_and_shift(sample_rate, frame_shift_ms, window_ms)
    return 0 if num_samples < window else 1 + (num_samples - window) // shift


def _window_and_shift(sample_rate: int, frame_shift_ms: float, window_ms: float) -> tuple[int, int]:
    window = int(round(sample_rate * window_ms / 1000.0))
    shift = int(round(sample_rate * frame_shift_ms / 1000.0))
    if window < 1 or shift < 1:
        raise ValueError(f"log_mel: window {window_ms} ms and shift {frame_shift_ms} ms are under one sample")
    return window, shift


_FILTERBANKS: dict[tuple, np.ndarray] = {}  # (num_freqs, sample_rate, num_mels) -> filterbank; one per setting


def log_mel(
    audio: np.ndarray,
    sample_rate: int,
    *,
    num_mels: int = 40,
    frame_shift_ms: float = 10,
    window_ms: float = 25,
    floor: float = 1e-10,
) -> np.ndarray:
    """Log mel filterbank energies ``[T, num_mels]`` float32 of mono ``audio`` (any float scale).

    ``T`` is :func:`num_frames`; audio shorter than one window gives ``[0, num_mels]``.
    """
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim != 1:
        raise ValueError(f"log_mel: audio must be mono [num_samples], got shape {audio.shape}")
    window, shift = _window_and_shift(sample_rate, frame_shift_ms, window_ms)
    n_frames = num_frames(len(audio), sample_rate, frame_shift_ms=frame_shift_ms, window_ms=window_ms)
    if n_frames == 0:
        return np.zeros((0, num_mels), dtype=np.float32)
    n_fft = 1 << (window - 1).bit_length()  # next power of two: 400 samples -> 512
    frames = np.lib.stride_tricks.sliding_window_view(audio, window)[::shift][:n_frames]
    spectrum = np.fft.rfft(frames * _hann(window), n=n_fft, axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    key = (n_fft // 2 + 1, sample_rate, num_mels)
    fbank = _FILTERBANKS.get(key)
    if fbank is None:
        fbank = _FILTERBANKS[key] = mel_filterbank(n_fft // 2 + 1, sample_rate, num_mels)
    # einsum, not a BLAS matmul: OpenBLAS threads spin after each small product and steal the CPU
    # from the other work of a corpus writer (2-3x slower on a busy 2-core machine).
    return np.log(np.maximum(np.einsum("tf,fm->tm", power, fbank), floor)).astype(np.float32)


def _hann(window: int) -> np.ndarray:
    """The periodic Hann window (``torch.hann_window``, ``scipy.signal.get_window("hann")``)."""
    return np.hanning(window + 1)[:-1]


def normalize_per_utterance(features: np.ndarray, *, eps: float = 1e-5) -> np.ndarray:
    """Mean 0 and variance 1 per feature dimension over the frames of one utterance (CMVN).

    Removes the level of the recording (gain, channel), which the corpus files should not carry.

    >>> import numpy as np
    >>> out = normalize_per_utterance(np.array([[1.0, 5.0], [3.0, 5.0]], "float32"))
    >>> out.round(3).tolist()
    [[-1.0, 0.0], [1.0, 0.0]]
    """
    if len(features) == 0:
        return features.astype(np.float32)
    mean = features.mean(axis=0, keepdims=True)
    std = features.std(axis=0, keepdims=True)
    return ((features - mean) / np.maximum(std, eps)).astype(np.float32)


def utterance_features(audio: np.ndarray, sample_rate: int, *, num_mels: int = 40) -> np.ndarray:
    """What the corpus files store as ``data``: :func:`log_mel` normalised per utterance, ``[T, num_mels]``."""
    return normalize_per_utterance(log_mel(audio, sample_rate, num_mels=num_mels))
