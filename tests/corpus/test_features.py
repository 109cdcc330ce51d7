"""Log-mel features: frame count, where a tone lands, the STFT against torch, the filterbank and the
whole log-mel against librosa (an independent implementation; torchaudio has no build for torch 2.13)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skip_or_fail import skip_or_fail  # tests/ is on sys.path (rootdir conftest)

from returnn_ray.corpus.features import (
    hz_to_mel,
    log_mel,
    mel_filterbank,
    mel_to_hz,
    normalize_per_utterance,
    num_frames,
)

SR = 16000


def tone(freq: float, seconds: float = 0.5, sr: int = SR) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)


@pytest.mark.parametrize("num_samples", [0, 399, 400, 559, 560, 16000, 16001])
def test_frame_count_follows_the_formula(num_samples):
    feats = log_mel(np.zeros(num_samples), SR, num_mels=23)
    expected = 0 if num_samples < 400 else 1 + (num_samples - 400) // 160
    assert feats.shape == (expected, 23) == (num_frames(num_samples, SR), 23)
    assert feats.dtype == np.float32


def test_frame_count_for_other_rates_and_shifts():
    # 8 kHz: a 25 ms window is 200 samples, a 10 ms shift 80.
    assert log_mel(np.zeros(8000), 8000).shape == (1 + (8000 - 200) // 80, 40)
    assert log_mel(np.zeros(16000), SR, frame_shift_ms=20, window_ms=50).shape == (1 + (16000 - 800) // 320, 40)


@pytest.mark.parametrize("freq", [250.0, 1000.0, 2500.0, 6000.0])
def test_pure_tone_energy_lands_in_the_nearest_mel_band(freq):
    feats = log_mel(tone(freq), SR, num_mels=40)
    centers = mel_to_hz(np.linspace(0.0, hz_to_mel(SR / 2), 42))[1:-1]  # band m peaks at centers[m]
    loudest = int(np.argmax(feats.mean(axis=0)))
    assert loudest == int(np.argmin(np.abs(centers - freq)))
    # Far from the tone only the window's leakage is left: many orders of magnitude below the peak.
    far = np.abs(centers - freq) > 2000
    assert feats.mean(axis=0)[loudest] - feats.mean(axis=0)[far].max() > np.log(1e4)


def test_level_shifts_log_energy_by_a_constant():
    quiet, loud = log_mel(0.01 * tone(1000), SR), log_mel(tone(1000), SR)
    band = int(np.argmax(loud.mean(axis=0)))
    np.testing.assert_allclose(loud[:, band] - quiet[:, band], 2 * np.log(100.0), rtol=1e-4)


def test_silence_gives_the_floor():
    assert np.all(log_mel(np.zeros(1000), SR) == np.float32(np.log(1e-10)))


def test_deterministic_and_input_untouched():
    audio = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    before = audio.copy()
    a, b = log_mel(audio, SR), log_mel(audio, SR)
    assert a.tobytes() == b.tobytes()
    assert np.array_equal(audio, before)


def test_power_spectrum_matches_torch_stft():
    # torch.stft centres the 400-sample window in each 512-sample frame, so its frame i covers
    # samples [56 + 160 i, 456 + 160 i): the same as our frames of audio[56:].
    audio = np.random.default_rng(1).standard_normal(4000)
    window = torch.hann_window(400, periodic=True, dtype=torch.float64)
    spec = torch.stft(
        torch.from_numpy(audio), n_fft=512, hop_length=160, win_length=400, window=window,
        center=False, return_complex=True,
    )
    power = (spec.abs() ** 2).numpy().T  # [frames, 257]
    expected = np.log(np.maximum(power @ mel_filterbank(257, SR, 40), 1e-10))
    ours = log_mel(audio[56:], SR)
    n = min(len(ours), len(expected))
    assert n >= 20
    np.testing.assert_allclose(ours[:n], expected[:n], rtol=1e-4, atol=1e-4)


def test_filterbank_triangles():
    fb = mel_filterbank(257, SR, 40)
    assert fb.shape == (257, 40) and np.all(fb >= 0)
    freqs = np.linspace(0, SR / 2, 257)
    peaks = freqs[np.argmax(fb, axis=0)]
    assert np.all(np.diff(peaks) > 0)  # bands in increasing frequency
    centers = mel_to_hz(np.linspace(0.0, hz_to_mel(SR / 2), 42))[1:-1]  # equally spaced in mel
    assert np.all(np.abs(peaks - centers) <= (SR / 2) / 256)  # each peak within one bin of its centre
    assert np.all(fb.sum(axis=1)[5:-5] > 0)  # every bin but the edges is covered


def librosa_reference():
    """librosa (the `test` extra). Missing: skipped on a developer's machine, a failure in CI, where
    the comparison with an implementation that is not ours must always run."""
    try:
        import librosa
    except ImportError:
        skip_or_fail("librosa is not installed (pip install -e '.[test]')")
    return librosa


@pytest.mark.parametrize("n_fft, sr, n_mels, f_min, f_max", [(512, 16000, 40, 0.0, 8000.0), (400, 8000, 23, 20.0, 3800.0)])
def test_filterbank_matches_librosa(n_fft, sr, n_mels, f_min, f_max):
    librosa = librosa_reference()
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max, htk=True, norm=None,
                              dtype=np.float64).T  # [bins, mels]
    ours = mel_filterbank(n_fft // 2 + 1, sr, n_mels, f_min=f_min, f_max=f_max)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_log_mel_matches_librosa_melspectrogram():
    # librosa (center=False) pads the 400-sample window to the middle of each 512-sample frame, as
    # torch.stft does: its frame i covers samples [56 + 160 i, 456 + 160 i), our frames of audio[56:].
    librosa = librosa_reference()
    audio = np.random.default_rng(3).standard_normal(8000)
    ref = librosa.feature.melspectrogram(
        y=audio, sr=SR, n_fft=512, hop_length=160, win_length=400, window="hann", center=False, power=2.0,
        n_mels=40, htk=True, norm=None, dtype=np.float64,
    ).T  # [frames, mels]
    ours = log_mel(audio[56:], SR)
    n = min(len(ours), len(ref))
    assert n >= 40
    np.testing.assert_allclose(ours[:n], np.log(np.maximum(ref[:n], 1e-10)), rtol=1e-4, atol=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="mono"):
        log_mel(np.zeros((100, 2)), SR)
    with pytest.raises(ValueError, match="f_min"):
        mel_filterbank(257, SR, 40, f_min=9000.0)


def test_normalize_per_utterance():
    feats = np.random.default_rng(2).normal(5.0, 3.0, size=(50, 4)).astype(np.float32)
    feats[:, 3] = 7.0  # a constant dimension stays finite
    out = normalize_per_utterance(feats)
    np.testing.assert_allclose(out[:, :3].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out[:, :3].std(axis=0), 1.0, atol=1e-4)
    assert np.all(out[:, 3] == 0.0)
    assert normalize_per_utterance(np.zeros((0, 4), np.float32)).shape == (0, 4)
