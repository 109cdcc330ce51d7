"""Real data: a folder of WAV files plus a transcript list -> the same RETURNN HDF layout as the synthetic corpus.

Command::

    python -m returnn_ray.corpus.wav WAV_DIR TRANSCRIPTS OUT.hdf [--num-mels 40] [--vocab train.hdf]
        [--subset] [--overwrite]

- ``TRANSCRIPTS``: a text file with one utterance per line, ``<utterance-id> <word> <word> ...``
  (blank lines and lines starting with ``#`` are skipped). The HDF keeps this order; the id is
  the seq tag.
- ``WAV_DIR/<utterance-id>.wav``: 16-bit PCM, mono, all at one sample rate (nothing is
  resampled: convert first, e.g. ``sox in.flac -r 16000 -c 1 -b 16 out.wav``). Every ``.wav``
  of the folder must have its transcript line (a forgotten line would silently lose the
  utterance), unless ``--subset`` says the transcripts pick some of the folder's files.
- The vocabulary (labels of ``classes``) is the sorted set of the transcripts' words, or, with
  ``--vocab``, the ``classes`` labels of another HDF (e.g. the train file, so that a dev file gets
  the same word ids) or a text file with one word per line.

The output holds ``data`` (log-mel features ``[T, num_mels]``, normalised per utterance, as
:func:`~returnn_ray.corpus.features.utterance_features`) and ``classes`` (word ids), written
atomically. ``OUT`` is never one of the inputs (the transcript list, the ``--vocab`` file, a
WAV), and an existing ``OUT`` is replaced only with ``--overwrite``. Bad input (a missing or
unreadable WAV, an empty transcript, a word not in ``--vocab``, another sample rate) stops with
one line naming the file and what to do, exit code 2, and writes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import wave
from typing import Sequence

import h5py
import numpy as np

from returnn_ray.atomic import same_file_among
from returnn_ray.corpus.features import num_frames, utterance_features
from returnn_ray.data.base import DataSpec
from returnn_ray.data.hdf import HDFDataset, HDFWriter
from returnn_ray.errors import UserError

__all__ = ["read_transcripts", "read_wav", "read_vocab", "convert_wav_corpus"]


@dataclasses.dataclass(frozen=True)
class TranscriptEntry:
    """One line of the transcript list."""

    utterance_id: str
    words: tuple[str, ...]
    line: int
    """Line number in the transcript file (1-based), for error messages."""


def read_transcripts(path: str) -> list[TranscriptEntry]:
    """Parse ``<utterance-id> <word> ...`` lines; UserError for an empty transcript or a repeated id."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read transcript list {path!r}: {exc}") from None
    entries: list[TranscriptEntry] = []
    seen: dict[str, int] = {}
    for number, text in enumerate(lines, start=1):
        fields = text.split()
        if not fields or fields[0].startswith("#"):
            continue
        utt_id, words = fields[0], tuple(fields[1:])
        if not words:
            raise UserError(f"{path}:{number}: utterance {utt_id!r} has an empty transcript; give its words or drop it")
        if utt_id in seen:
            raise UserError(f"{path}:{number}: utterance {utt_id!r} already appears on line {seen[utt_id]}")
        if "/" in utt_id or utt_id in (".", ".."):
            raise UserError(f"{path}:{number}: utterance id {utt_id!r} cannot name a file in the WAV folder")
        seen[utt_id] = number
        entries.append(TranscriptEntry(utt_id, words, number))
    if not entries:
        raise UserError(f"transcript list {path!r} has no utterances (lines '<utterance-id> <word> ...')")
    return entries


def read_wav(path: str) -> tuple[np.ndarray, int]:
    """Samples (float32 in [-1, 1)) and sample rate of a 16-bit PCM mono WAV file; UserError otherwise."""
    if not os.path.isfile(path):
        raise UserError(f"WAV file {path!r} does not exist (each transcript id needs <WAV_DIR>/<id>.wav)")
    try:
        with wave.open(path, "rb") as f:
            channels, width, rate, n = f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()
            raw = f.readframes(n)
    except (wave.Error, EOFError, OSError) as exc:
        raise UserError(f"WAV file {path!r} is unreadable ({exc}); it must be a 16-bit PCM WAV file") from None
    if width != 2:
        raise UserError(f"WAV file {path!r} has {8 * width}-bit samples; convert it to 16-bit PCM")
    if channels != 1:
        raise UserError(f"WAV file {path!r} has {channels} channels; convert it to mono")
    if len(raw) != 2 * n:
        raise UserError(f"WAV file {path!r} is truncated: header says {n} samples, file holds {len(raw) // 2}")
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0, rate


def read_vocab(path: str) -> list[str]:
    """A vocabulary: the ``classes`` labels of a RETURNN HDF file, or a text file with one word per line."""
    if not os.path.isfile(path):
        raise UserError(f"vocabulary file {path!r} does not exist")
    if h5py.is_hdf5(path):
        labels = HDFDataset([path], name="vocab").labels.get("classes")
        if not labels:
            raise UserError(f"HDF file {path!r} has no labels for 'classes'; give a text file with one word per line")
        return labels
    try:
        with open(path, encoding="utf-8") as f:
            words = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read vocabulary file {path!r}: {exc}") from None
    if len(set(words)) != len(words):
        raise UserError(f"vocabulary file {path!r} lists a word twice")
    if not words:
        raise UserError(f"vocabulary file {path!r} is empty")
    return words


def convert_wav_corpus(
    wav_dir: str,
    transcripts: str,
    out: str,
    *,
    num_mels: int = 40,
    vocab: Sequence[str] | None = None,
    subset: bool = False,
    overwrite: bool = False,
    other_inputs: Sequence[str] = (),
) -> dict[str, float]:
    """Write ``out`` (RETURNN HDF: ``data`` log-mel, ``classes`` word ids) from WAV files and transcripts.

    ``vocab`` fixes the word ids (default: the sorted set of the transcripts' words). Returns totals.
    All WAV files must exist before anything is converted (and, unless ``subset``, every WAV of
    the folder must be listed); ``out`` appears only when all succeeded, and is never an input
    nor, unless ``overwrite``, an existing file. ``other_inputs``: more files ``out`` must not be
    (the file ``vocab`` came from).
    """
    entries = read_transcripts(transcripts)
    paths = [os.path.join(wav_dir, f"{e.utterance_id}.wav") for e in entries]
    wavs = check_wav_folder(wav_dir, transcripts, entries, subset=subset)
    check_out(out, [transcripts, *other_inputs, *(os.path.join(wav_dir, n) for n in wavs)], overwrite=overwrite)
    for entry, path in zip(entries, paths):
        if not os.path.isfile(path):
            raise UserError(
                f"{transcripts}:{entry.line}: no WAV file {path!r} for utterance {entry.utterance_id!r}"
            )
    if vocab is None:
        vocab = sorted({w for e in entries for w in e.words})
    vocab = list(vocab)
    word_ids = {w: i for i, w in enumerate(vocab)}
    for entry in entries:
        unknown = [w for w in entry.words if w not in word_ids]
        if unknown:
            raise UserError(
                f"{transcripts}:{entry.line}: word {unknown[0]!r} of {entry.utterance_id!r} is not in the vocabulary"
            )
    specs = {"data": DataSpec(num_mels), "classes": DataSpec(len(vocab), sparse=True, dtype="int32")}
    sample_rate: int | None = None
    first_path = ""
    frames = samples = 0
    with HDFWriter(out, specs, {"classes": vocab}) as writer:
        for entry, path in zip(entries, paths):
            audio, rate = read_wav(path)
            if sample_rate is None:
                sample_rate, first_path = rate, path
            elif rate != sample_rate:
                raise UserError(
                    f"WAV file {path!r} has sample rate {rate} Hz but {first_path!r} has {sample_rate} Hz; "
                    f"resampling is not supported, convert all files to one rate"
                )
            if num_frames(len(audio), rate) == 0:
                raise UserError(f"WAV file {path!r} is shorter than one 25 ms analysis window")
            feats = utterance_features(audio, rate, num_mels=num_mels)
            classes = np.array([word_ids[w] for w in entry.words], dtype=np.int32)
            writer.add_seq(entry.utterance_id, {"data": feats, "classes": classes})
            frames += len(feats)
            samples += len(audio)
    return {"num_seqs": len(entries), "frames": frames, "audio_seconds": samples / (sample_rate or 1)}


def check_wav_folder(wav_dir: str, transcripts: str, entries: Sequence[TranscriptEntry], *, subset: bool) -> list[str]:
    """The folder's ``.wav`` file names, checked: there are some, and (unless ``subset``) none
    that the transcript list forgets."""
    try:
        wavs = sorted(n for n in os.listdir(wav_dir) if n.lower().endswith(".wav"))
    except OSError as exc:
        raise UserError(f"cannot list WAV folder {wav_dir!r}: {exc.strerror}") from None
    if not wavs:
        raise UserError(f"WAV folder {wav_dir!r} holds no .wav files; give the folder with <utterance-id>.wav files")
    if subset:
        return wavs
    listed = {f"{e.utterance_id}.wav" for e in entries}
    unlisted = [n for n in wavs if n not in listed]
    if unlisted:
        raise UserError(
            f"{len(unlisted)} WAV file(s) of {wav_dir!r} have no line in {transcripts!r} (first: {unlisted[0]!r});"
            " add their transcripts, or pass --subset to convert only the listed utterances"
        )
    return wavs


def check_out(out: str, inputs: Sequence[str], *, overwrite: bool) -> None:
    """``out`` can be written: not an input (even with ``overwrite``), not a directory, in an
    existing folder, and new unless ``overwrite``."""
    if os.path.isdir(out):
        raise UserError(f"output {out!r} is a directory; give a file name for the HDF file")
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        raise UserError(f"the folder {directory!r} of output {out!r} does not exist; create it or fix OUT")
    if not os.path.exists(out):
        return
    same = same_file_among(out, inputs)
    if same is not None:
        raise UserError(f"output {out!r} is the input file {same!r}; give another OUT")
    if not overwrite:
        raise UserError(f"output {out!r} exists; give another OUT, delete it, or pass --overwrite to replace it")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m returnn_ray.corpus.wav WAV_DIR TRANSCRIPTS OUT.hdf [--num-mels 40] [--vocab FILE]``."""
    parser = argparse.ArgumentParser(
        prog="python -m returnn_ray.corpus.wav",
        description="Convert a folder of WAV files (<WAV_DIR>/<utterance-id>.wav, 16-bit PCM mono, one sample rate) "
        "and a transcript list (lines '<utterance-id> <word> ...') into a RETURNN HDF file with log-mel "
        "features (data) and word ids (classes).",
    )
    parser.add_argument("wav_dir", help="folder with <utterance-id>.wav files")
    parser.add_argument("transcripts", help="text file, one '<utterance-id> <word> <word> ...' per line")
    parser.add_argument("out", help="output HDF file (written atomically)")
    parser.add_argument("--num-mels", type=int, default=40, help="feature dimension (default 40)")
    parser.add_argument(
        "--vocab",
        help="fix the word ids: an HDF file whose 'classes' labels to use (e.g. the train file) "
        "or a text file with one word per line (default: the sorted words of TRANSCRIPTS)",
    )
    parser.add_argument(
        "--subset", action="store_true",
        help="convert only the utterances of TRANSCRIPTS; other WAV files in WAV_DIR are ignored "
        "(default: every WAV file must have a transcript line)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT (never an input file)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.num_mels < 1:
            raise UserError(f"--num-mels must be >= 1, got {args.num_mels}")
        if not os.path.isdir(args.wav_dir):
            raise UserError(f"WAV folder {args.wav_dir!r} does not exist")
        vocab = read_vocab(args.vocab) if args.vocab else None
        totals = convert_wav_corpus(
            args.wav_dir, args.transcripts, args.out, num_mels=args.num_mels, vocab=vocab, subset=args.subset,
            overwrite=args.overwrite, other_inputs=[args.vocab] if args.vocab else [],
        )
    except UserError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(
        f"wrote {args.out}: {totals['num_seqs']} seqs, {totals['frames']} frames "
        f"({totals['audio_seconds']:.0f} s audio) in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
