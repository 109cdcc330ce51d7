"""A deterministic synthetic speech corpus: spoken-word-like audio as log-mel features in a RETURNN HDF.

Data for experiments without downloads. Each utterance is 1 to ``max_words`` words of a small
lexicon, spoken by one of ``num_speakers`` speakers in additive noise:

- **Phones** (17: 5 vowels, 2 nasals, 2 liquids, 3 fricatives, 5 stops) are formant-like sounds:
  three formant frequencies, each sounding as a tone modulated by glottal pulses at the pitch
  (voiced) and/or as noise in a band around it (fricatives, bursts), with a typical duration.
  Stops are a closure followed by a burst.
- **Words** (``num_words``, 2-5 phones) are drawn from ``lexicon_seed`` so that train and dev
  corpora of different ``seed`` share one vocabulary. About a third of them are made from an
  earlier word by changing, adding or dropping one phone (``bado``/``pado``/``badon``), so many
  words differ in a single phone and no word is separable by a phone of its own.
- **Coarticulation**: every parameter is linearly interpolated between the steady parts of
  neighbouring phones, so formants glide from one phone into the next.
- **Speakers** differ in vocal-tract length (all formants scaled by 0.85-1.2), pitch (90-250 Hz),
  speaking rate (0.8-1.25), spectral tilt, breathiness and a small per-phone accent.
- **Per utterance**: duration jitter per phone, optional pauses between words, a pitch contour,
  per-word loudness, and white plus low-passed noise at an SNR drawn from ``snr_db``.

Audio is 16 kHz; features are :func:`~returnn_ray.corpus.features.log_mel` (10 ms frames)
normalised per utterance. The file holds ``data`` (``[T, num_mels]`` float32) and ``classes``
(the word ids of the transcription, sparse, with the vocabulary as its labels: targets for
a CTC model over words). Utterances last about 0.3-2.8 s (25-280 frames).

Everything is deterministic: utterance ``i`` of corpus ``seed`` is the same audio on every
machine and run, whatever ``num_seqs`` is.

Command (a RETURNN config then uses ``train = "train.hdf"``)::

    python -m returnn_ray.corpus.synthetic train.hdf --num-seqs 5000 --seed 1
    python -m returnn_ray.corpus.synthetic dev.hdf --num-seqs 500 --seed 2

>>> corpus = SyntheticCorpus(seed=3)
>>> utt = corpus.utterance(0)
>>> utt.tag, all(w in corpus.vocab for w in utt.words), utt.audio.dtype
('synthetic-3/0', True, dtype('float32'))
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Literal, Sequence

import numpy as np

from returnn_ray.corpus.features import num_frames, utterance_features
from returnn_ray.data.base import DataSpec
from returnn_ray.data.hdf import HDFWriter
from returnn_ray.errors import UserError

__all__ = ["PHONES", "Phone", "Speaker", "Utterance", "SyntheticCorpus", "make_lexicon", "generate_corpus"]

SAMPLE_RATE = 16000

# Independent random streams: np.random.default_rng([seed, stream, index]).
_LEXICON_STREAM, _SPEAKER_STREAM, _UTTERANCE_STREAM = 1, 2, 3

_NEUTRAL = (500.0, 1500.0, 2500.0)  # formants during silence (only their interpolation towards a phone matters)


@dataclasses.dataclass(frozen=True)
class Phone:
    """One phone of the inventory: how its synthesis parameters move over its duration."""

    symbol: str
    """One letter; a word's name is its phone symbols joined."""
    kind: Literal["vowel", "nasal", "liquid", "fricative", "stop"]
    """Phones of one kind replace each other in the lexicon's minimal pairs."""
    duration_ms: float
    """Typical duration at speaking rate 1."""
    knots: tuple[tuple[float, ...], ...]
    """``(position 0..1 in the phone, F1, F2, F3 Hz, A1, A2, A3, voicing 0..1, noise 0..1)``."""


def _steady(symbol, kind, duration_ms, formants, amps, voicing=1.0, noise=0.0) -> Phone:
    # Targets held over the middle 40%; the outer 30% on each side glide to the neighbours.
    knot = (*formants, *amps, voicing, noise)
    return Phone(symbol, kind, duration_ms, ((0.3, *knot), (0.7, *knot)))


def _stop(symbol, burst_formants, burst_amps, voiced: bool) -> Phone:
    # Closure (silence, or a low "voice bar" for voiced stops), then a noise burst whose band
    # frequencies glide into the next phone's formants (the locus transition of a real stop).
    bar = (250.0, _NEUTRAL[1], _NEUTRAL[2], 0.15 if voiced else 0.0, 0.0, 0.0, 1.0 if voiced else 0.0, 0.0)
    burst = (*burst_formants, *burst_amps, 0.3 if voiced else 0.0, 1.0)
    fading = (*burst_formants, *(a * 0.4 for a in burst_amps), 0.6 if voiced else 0.0, 0.7)
    return Phone(symbol, "stop", 75.0, ((0.08, *bar), (0.6, *bar), (0.68, *burst), (0.92, *fading)))


PHONES: dict[str, Phone] = {
    p.symbol: p
    for p in [
        _steady("a", "vowel", 115, (730, 1090, 2440), (1.0, 0.5, 0.25)),
        _steady("e", "vowel", 105, (530, 1840, 2480), (1.0, 0.45, 0.3)),
        _steady("i", "vowel", 95, (270, 2290, 3010), (1.0, 0.35, 0.3)),
        _steady("o", "vowel", 110, (570, 840, 2410), (1.0, 0.6, 0.15)),
        _steady("u", "vowel", 100, (300, 870, 2240), (1.0, 0.4, 0.1)),
        _steady("m", "nasal", 75, (250, 1100, 2200), (0.5, 0.08, 0.05)),
        _steady("n", "nasal", 70, (250, 1700, 2600), (0.5, 0.1, 0.06)),
        _steady("l", "liquid", 65, (360, 1300, 2700), (0.6, 0.3, 0.15)),
        _steady("r", "liquid", 65, (420, 1250, 1650), (0.6, 0.35, 0.25)),
        _steady("s", "fricative", 105, (4300, 5600, 7000), (0.2, 0.35, 0.25), voicing=0.0, noise=1.0),
        _steady("f", "fricative", 95, (1800, 4000, 6500), (0.08, 0.1, 0.12), voicing=0.0, noise=1.0),
        _steady("z", "fricative", 95, (250, 4200, 5800), (0.3, 0.25, 0.2), voicing=0.5, noise=0.8),
        _stop("p", (700, 1200, 2500), (0.1, 0.15, 0.1), voiced=False),
        _stop("t", (3500, 4500, 6000), (0.2, 0.3, 0.25), voiced=False),
        _stop("k", (1800, 2600, 3500), (0.3, 0.25, 0.1), voiced=False),
        _stop("b", (700, 1200, 2500), (0.08, 0.1, 0.06), voiced=True),
        _stop("d", (3500, 4500, 6000), (0.12, 0.2, 0.15), voiced=True),
    ]
}
_PHONE_INDEX = {symbol: i for i, symbol in enumerate(PHONES)}
_VOWELS = [s for s, p in PHONES.items() if p.kind == "vowel"]
_CONSONANTS = [s for s, p in PHONES.items() if p.kind != "vowel"]


def make_lexicon(num_words: int, seed: int = 0) -> dict[str, tuple[str, ...]]:
    """``num_words`` words (name -> phones, 2-5 phones each), sorted by name; deterministic in ``seed``.

    >>> lex = make_lexicon(40)
    >>> len(lex), list(lex) == sorted(lex), all(2 <= len(p) <= 5 for p in lex.values())
    (40, True, True)
    >>> all("".join(phones) == word for word, phones in lex.items())
    True
    """
    if not 2 <= num_words <= 2000:
        raise UserError(f"synthetic corpus: num_words must be in 2..2000, got {num_words}")
    rng = np.random.default_rng([seed, _LEXICON_STREAM])
    words: dict[str, tuple[str, ...]] = {}
    while len(words) < num_words:
        if len(words) >= 4 and rng.random() < 0.35:
            phones = _neighbour(list(words.values())[rng.integers(len(words))], rng)
        else:
            length = int(rng.choice([2, 3, 4, 5], p=[0.2, 0.35, 0.3, 0.15]))
            vowel_first = rng.random() < 0.25
            phones = tuple(
                str(rng.choice(_VOWELS if (i % 2 == 0) == vowel_first else _CONSONANTS)) for i in range(length)
            )
        words.setdefault("".join(phones), phones)
    return dict(sorted(words.items()))


def _neighbour(phones: tuple[str, ...], rng: np.random.Generator) -> tuple[str, ...]:
    """A word one phone away: substitute a phone by one of its kind, append one, or drop one."""
    op = rng.integers(3)
    if op == 1 and len(phones) < 5:
        pool = _CONSONANTS if PHONES[phones[-1]].kind == "vowel" else _VOWELS
        return phones + (str(rng.choice(pool)),)
    if op == 2 and len(phones) > 2:
        drop = int(rng.integers(len(phones)))
        return phones[:drop] + phones[drop + 1 :]
    pos = int(rng.integers(len(phones)))
    kind = PHONES[phones[pos]].kind
    same_kind = [s for s, p in PHONES.items() if p.kind == kind and s != phones[pos]]
    return phones[:pos] + (str(rng.choice(same_kind)),) + phones[pos + 1 :]


@dataclasses.dataclass(frozen=True)
class Speaker:
    """How one speaker changes every phone."""

    formant_scale: float
    """Vocal-tract length: every formant is multiplied by this (0.85-1.2)."""
    f0_hz: float
    """Mean pitch."""
    speed: float
    """Speaking rate; durations are divided by it."""
    tilt: float
    """Amplitude factor of F2 (F3 gets its square): brighter or duller voices."""
    breathiness: float
    """Noise mixed into voiced sounds."""
    accent: tuple[tuple[float, float, float], ...]
    """Per phone (inventory order), a factor on each formant near 1."""


def make_speaker(seed: int, index: int) -> Speaker:
    """Speaker ``index`` of corpus ``seed`` (corpora with other seeds have other speakers)."""
    rng = np.random.default_rng([seed, _SPEAKER_STREAM, index])
    low_voice = rng.random() < 0.5
    return Speaker(
        formant_scale=float(rng.uniform(0.85, 1.0) if low_voice else rng.uniform(1.02, 1.2)),
        f0_hz=float(rng.uniform(90, 150) if low_voice else rng.uniform(160, 250)),
        speed=float(rng.uniform(0.8, 1.25)),
        tilt=float(rng.uniform(0.6, 1.2)),
        breathiness=float(rng.uniform(0.0, 0.25)),
        accent=tuple(tuple(float(x) for x in row) for row in rng.normal(1.0, 0.04, size=(len(PHONES), 3))),
    )


@dataclasses.dataclass
class Utterance:
    """One synthesised utterance."""

    tag: str
    """Seq tag in the HDF file: ``synthetic-<seed>/<index>``."""
    words: list[str]
    """The transcription."""
    speaker: int
    """Index of the speaker."""
    snr_db: float
    """Signal-to-noise ratio of the added noise."""
    audio: np.ndarray
    """float32 ``[num_samples]`` at 16 kHz, peak below 1."""


class SyntheticCorpus:
    """The corpus of one ``seed``: its lexicon, speakers, and utterance ``i`` for any ``i``.

    >>> c = SyntheticCorpus(seed=1, num_words=10)
    >>> len(c.vocab), np.array_equal(c.utterance(5).audio, SyntheticCorpus(seed=1, num_words=10).utterance(5).audio)
    (10, True)
    """

    def __init__(
        self,
        seed: int,
        *,
        num_words: int = 40,
        lexicon_seed: int = 0,
        num_speakers: int = 16,
        min_words: int = 1,
        max_words: int = 5,
        snr_db: tuple[float, float] = (5.0, 30.0),
        num_mels: int = 40,
    ):
        if not 1 <= min_words <= max_words:
            raise UserError(f"synthetic corpus: need 1 <= min_words <= max_words, got {min_words}, {max_words}")
        if num_speakers < 1:
            raise UserError(f"synthetic corpus: num_speakers must be >= 1, got {num_speakers}")
        if len(snr_db) != 2 or snr_db[0] > snr_db[1]:
            raise UserError(f"synthetic corpus: snr_db must be (low, high) with low <= high, got {snr_db}")
        if num_mels < 1:
            raise UserError(f"synthetic corpus: num_mels must be >= 1, got {num_mels}")
        self.seed = int(seed)
        self.lexicon = make_lexicon(num_words, lexicon_seed)
        self.vocab = list(self.lexicon)
        """Word names in id order: the labels of ``classes``."""
        self.word_ids = {w: i for i, w in enumerate(self.vocab)}
        self.speakers = [make_speaker(self.seed, k) for k in range(num_speakers)]
        self.min_words, self.max_words = min_words, max_words
        self.snr_db = (float(snr_db[0]), float(snr_db[1]))
        self.num_mels = num_mels

    def utterance(self, index: int) -> Utterance:
        """Utterance ``index``: words, speaker and audio, from ``(seed, index)`` alone."""
        rng, speaker_idx, words, snr = self._draw(index)
        audio = _synthesize([self.lexicon[w] for w in words], self.speakers[speaker_idx], snr, rng)
        return Utterance(f"synthetic-{self.seed}/{index}", words, speaker_idx, snr, audio)

    def num_frames(self, index: int) -> int:
        """The feature frames of utterance ``index`` without synthesising its audio (~100x faster):
        the lengths a batch plan needs, e.g. to size an experiment's batches.

        >>> c = SyntheticCorpus(seed=1, num_words=10)
        >>> c.num_frames(3) == len(c.features(c.utterance(3)))
        True
        """
        rng, speaker_idx, words, _ = self._draw(index)
        timeline = _timeline([self.lexicon[w] for w in words], self.speakers[speaker_idx], rng)
        return num_frames(int(timeline.end * SAMPLE_RATE), SAMPLE_RATE)

    def _draw(self, index: int) -> tuple[np.random.Generator, int, list[str], float]:
        """The random choices of utterance ``index`` before its audio: its generator (to go on
        with), speaker, words and signal-to-noise ratio."""
        rng = np.random.default_rng([self.seed, _UTTERANCE_STREAM, index])
        speaker_idx = int(rng.integers(len(self.speakers)))
        num_words = int(rng.integers(self.min_words, self.max_words + 1))
        words = [self.vocab[i] for i in rng.integers(len(self.vocab), size=num_words)]
        snr = float(rng.uniform(*self.snr_db))
        return rng, speaker_idx, words, snr

    def features(self, utt: Utterance) -> np.ndarray:
        """``[T, num_mels]`` float32: log-mel of the audio, normalised per utterance."""
        return utterance_features(utt.audio, SAMPLE_RATE, num_mels=self.num_mels)

    def write(self, path: str, num_seqs: int) -> dict[str, float]:
        """Write utterances ``0 .. num_seqs - 1`` to a RETURNN HDF at ``path`` (atomically); returns totals."""
        if num_seqs < 1:
            raise UserError(f"synthetic corpus: num_seqs must be >= 1, got {num_seqs}")
        specs = {
            "data": DataSpec(self.num_mels),
            "classes": DataSpec(len(self.vocab), sparse=True, dtype="int32"),
        }
        frames = samples = 0
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise UserError(f"synthetic corpus: cannot create the directory {directory!r}: {exc.strerror}") from exc
        with HDFWriter(path, specs, {"classes": self.vocab}) as writer:
            for index in range(num_seqs):
                utt = self.utterance(index)
                feats = self.features(utt)
                classes = np.array([self.word_ids[w] for w in utt.words], dtype=np.int32)
                writer.add_seq(utt.tag, {"data": feats, "classes": classes})
                frames += len(feats)
                samples += len(utt.audio)
        return {"num_seqs": num_seqs, "frames": frames, "audio_seconds": samples / SAMPLE_RATE}


def generate_corpus(path: str, *, num_seqs: int, seed: int, **options) -> None:
    """Write ``num_seqs`` synthetic utterances of corpus ``seed`` to the RETURNN HDF ``path``.

    ``options`` are :class:`SyntheticCorpus`'s (``num_mels``, ``num_words``, ``lexicon_seed``,
    ``num_speakers``, ``min_words``, ``max_words``, ``snr_db``). ``data`` = log-mel features
    ``[T, num_mels]``, ``classes`` = word ids with the vocabulary as labels. Use the same
    ``lexicon_seed`` and ``num_words`` for train and dev (different ``seed``) so they share it.
    """
    SyntheticCorpus(seed, **options).write(path, num_seqs)


# -- synthesis ---------------------------------------------------------------------------------


@dataclasses.dataclass
class _Timeline:
    """An utterance's synthesis parameters at knots in time, and its length in seconds."""

    times: list[float]
    params: list[tuple[float, ...]]
    f0_times: list[float]
    f0_values: list[float]
    end: float


def _timeline(words: Sequence[tuple[str, ...]], speaker: Speaker, rng: np.random.Generator) -> _Timeline:
    """The knots of a word sequence (its phones' durations decide the utterance's length)."""
    speed = speaker.speed * rng.uniform(0.9, 1.1)
    silence = (*_NEUTRAL, 0.0, 0.0, 0.0, 0.0, 0.0)
    times: list[float] = [0.0]
    params: list[tuple[float, ...]] = [silence]
    f0_times: list[float] = [0.0]
    f0_values: list[float] = [speaker.f0_hz * rng.uniform(1.0, 1.1)]
    t = float(rng.uniform(0.05, 0.2))  # leading silence
    for w, phones in enumerate(words):
        if w == 0 or rng.random() < 0.5:
            if w > 0:  # a pause between words; without one the words run into each other, as in speech
                times.append(t)
                params.append(silence)
                t += float(rng.uniform(0.03, 0.15))
            times.append(t)
            params.append(silence)
        loudness = rng.uniform(0.6, 1.2)
        word_start = t
        for symbol in phones:
            phone = PHONES[symbol]
            duration = phone.duration_ms / 1000.0 / speed * float(np.exp(rng.normal(0.0, 0.15)))
            accent = speaker.accent[_PHONE_INDEX[symbol]]
            for pos, f1, f2, f3, a1, a2, a3, voicing, noise in phone.knots:
                times.append(t + pos * duration)
                params.append(
                    (
                        f1 * speaker.formant_scale * accent[0],
                        f2 * speaker.formant_scale * accent[1],
                        f3 * speaker.formant_scale * accent[2],
                        a1 * loudness,
                        a2 * loudness * speaker.tilt,
                        a3 * loudness * speaker.tilt**2,
                        voicing,
                        min(1.0, noise + speaker.breathiness * voicing),
                    )
                )
            t += duration
        f0_times.append((word_start + t) / 2)
        f0_values.append(speaker.f0_hz * rng.uniform(0.88, 1.15))
    times.append(t)
    params.append(silence)
    t += float(rng.uniform(0.05, 0.2))  # trailing silence
    times.append(t)
    params.append(silence)
    f0_times.append(t)
    f0_values.append(speaker.f0_hz * rng.uniform(0.8, 0.9))  # falling at the end
    return _Timeline(times, params, f0_times, f0_values, t)


def _synthesize(
    words: Sequence[tuple[str, ...]], speaker: Speaker, snr_db: float, rng: np.random.Generator
) -> np.ndarray:
    """Audio of a word sequence: parameter knots -> per-sample tracks -> tones and noise bands."""
    timeline = _timeline(words, speaker, rng)
    f0_times, f0_values = timeline.f0_times, timeline.f0_values
    n = int(timeline.end * SAMPLE_RATE)
    sample_t = np.arange(n) / SAMPLE_RATE
    knot_t = np.asarray(timeline.times)
    knots = np.asarray(timeline.params)
    # Coarticulation: every parameter moves linearly from one knot to the next.
    tracks = [np.interp(sample_t, knot_t, knots[:, j]) for j in range(knots.shape[1])]
    formants, amps, voicing, noise = tracks[0:3], tracks[3:6], tracks[6], tracks[7]
    nyquist_margin = 0.47 * SAMPLE_RATE
    f0 = np.interp(sample_t, f0_times, f0_values)
    pulse = (1.0 + np.cos(2 * np.pi * np.cumsum(f0) / SAMPLE_RATE)) / 2.0
    glottal = pulse * pulse * pulse * 3.2  # one pulse per pitch period (harmonics), mean about 1

    signal = np.zeros(n)
    for freq, amp in zip(formants, amps):
        phase = 2 * np.pi * np.cumsum(np.minimum(freq, nyquist_margin)) / SAMPLE_RATE
        band_noise = _lowpass(rng.standard_normal(n), 8) * np.cos(phase) * np.sqrt(2.0)
        signal += amp * (voicing * glottal * np.sin(phase) + noise * band_noise)

    active = np.abs(signal) > 0
    rms = np.sqrt(np.mean(signal[active] ** 2)) if active.any() else 1.0
    signal /= rms
    mix = rng.uniform(0.0, 1.0)  # white vs low-frequency (rumble, babble-like) background
    background = mix * rng.standard_normal(n) + (1 - mix) * _lowpass(rng.standard_normal(n), 24)
    signal += background * 10.0 ** (-snr_db / 20.0)
    peak = np.max(np.abs(signal))
    return (signal * (rng.uniform(0.3, 0.95) / peak)).astype(np.float32)


def _lowpass(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average over ``width`` samples, rescaled to keep white noise at unit variance."""
    return np.convolve(x, np.full(width, 1.0 / np.sqrt(width)), mode="same")


# -- command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m returnn_ray.corpus.synthetic OUT.hdf --num-seqs N --seed S``."""
    parser = argparse.ArgumentParser(
        prog="python -m returnn_ray.corpus.synthetic",
        description="Write a deterministic synthetic speech corpus (log-mel features, word transcriptions) "
        "as a RETURNN HDF file.",
    )
    parser.add_argument("out", help="output HDF file (written atomically)")
    parser.add_argument("--num-seqs", type=int, required=True, help="number of utterances")
    parser.add_argument("--seed", type=int, required=True, help="corpus seed (use different seeds for train/dev)")
    parser.add_argument("--num-mels", type=int, default=40, help="feature dimension (default 40)")
    parser.add_argument("--num-words", type=int, default=40, help="vocabulary size (default 40)")
    parser.add_argument("--lexicon-seed", type=int, default=0, help="lexicon seed; keep it equal for train and dev")
    parser.add_argument("--num-speakers", type=int, default=16, help="speakers per corpus (default 16)")
    parser.add_argument("--min-words", type=int, default=1, help="fewest words per utterance (default 1)")
    parser.add_argument("--max-words", type=int, default=5, help="most words per utterance (default 5)")
    parser.add_argument(
        "--snr-db", type=float, nargs=2, default=(5.0, 30.0), metavar=("LOW", "HIGH"), help="SNR range (5 30)"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        corpus = SyntheticCorpus(
            args.seed,
            num_words=args.num_words,
            lexicon_seed=args.lexicon_seed,
            num_speakers=args.num_speakers,
            min_words=args.min_words,
            max_words=args.max_words,
            snr_db=tuple(args.snr_db),
            num_mels=args.num_mels,
        )
        totals = corpus.write(args.out, args.num_seqs)
    except UserError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    seconds = time.perf_counter() - start
    print(
        f"wrote {args.out}: {args.num_seqs} seqs, {totals['frames']} frames ({totals['audio_seconds']:.0f} s audio), "
        f"{len(corpus.vocab)} words, {args.num_mels} mels, in {seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
