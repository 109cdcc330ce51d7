"""WAV folder + transcript list -> RETURNN HDF: round trip, vocabulary, and one-line errors for bad input."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from returnn_ray.corpus.features import utterance_features
from returnn_ray.corpus.synthetic import SyntheticCorpus, generate_corpus
from returnn_ray.corpus.wav import convert_wav_corpus, main, read_vocab
from returnn_ray.data.hdf import HDFDataset
from returnn_ray.errors import UserError


def write_wav(path, audio, rate=16000, channels=1, width=2):
    pcm = np.clip(np.round(np.asarray(audio) * 32767), -32768, 32767).astype("<i2")
    if channels == 2:
        pcm = np.repeat(pcm, 2)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes() if width == 2 else (pcm // 256).astype(np.int8).tobytes())


@pytest.fixture
def wav_corpus(tmp_path):
    """Four synthetic utterances as WAV files, and their transcript list (not in tag order)."""
    corpus = SyntheticCorpus(seed=4)
    wav_dir = tmp_path / "wavs"
    wav_dir.mkdir()
    utts = {}
    for i in (3, 0, 2, 1):
        utt = corpus.utterance(i)
        utt_id = f"spk{utt.speaker}-utt{i}"
        write_wav(wav_dir / f"{utt_id}.wav", utt.audio)
        utts[utt_id] = utt
    transcripts = tmp_path / "text"
    lines = ["# id words", ""] + [f"{k} {' '.join(u.words)}" for k, u in utts.items()]
    transcripts.write_text("\n".join(lines) + "\n")
    return wav_dir, transcripts, utts


def test_round_trip(wav_corpus, tmp_path, capsys):
    wav_dir, transcripts, utts = wav_corpus
    out = tmp_path / "out.hdf"
    assert main([str(wav_dir), str(transcripts), str(out), "--num-mels", "30"]) == 0
    assert "4 seqs" in capsys.readouterr().out
    ds = HDFDataset([str(out)])
    assert ds.seq_tags == list(utts)  # transcript order, ids as tags
    vocab = sorted({w for u in utts.values() for w in u.words})
    assert ds.labels["classes"] == vocab and ds.specs["data"].dim == 30
    for seq, (utt_id, utt) in zip(ds.get_seqs(range(4)), utts.items()):
        assert [vocab[c] for c in seq["classes"]] == utt.words
        with wave.open(str(wav_dir / f"{utt_id}.wav")) as f:
            pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2")
        expected = utterance_features(pcm.astype(np.float32) / 32768.0, 16000, num_mels=30)
        np.testing.assert_array_equal(seq["data"], expected)
        # 16-bit quantisation changes the features of the float audio only a little.
        close = utterance_features(utt.audio, 16000, num_mels=30)
        assert np.abs(seq["data"] - close).mean() < 0.05


def test_returnn_reads_the_file(wav_corpus, tmp_path):
    hdf = pytest.importorskip("returnn.datasets.hdf")
    wav_dir, transcripts, utts = wav_corpus
    out = tmp_path / "out.hdf"
    convert_wav_corpus(str(wav_dir), str(transcripts), str(out))
    ds = hdf.HDFDataset(files=[str(out)])
    ds.initialize()
    ds.init_seq_order(epoch=1)
    ds.load_seqs(0, 4)
    assert ds.num_seqs == 4 and ds.num_inputs == 40
    assert [ds.get_tag(i) for i in range(4)] == list(utts)
    assert [ds.labels["classes"][c] for c in ds.get_data(0, "classes")] == next(iter(utts.values())).words


def test_vocab_from_train_file(wav_corpus, tmp_path):
    # A dev set converted with --vocab train.hdf gets the train file's word ids.
    wav_dir, transcripts, utts = wav_corpus
    train = tmp_path / "train.hdf"
    generate_corpus(str(train), num_seqs=2, seed=4)
    out = tmp_path / "dev.hdf"
    assert main([str(wav_dir), str(transcripts), str(out), "--vocab", str(train)]) == 0
    vocab = SyntheticCorpus(seed=4).vocab
    first_id = next(iter(utts))
    ds = HDFDataset([str(out)])
    assert ds.labels["classes"] == vocab
    assert [vocab[c] for c in ds.get_seqs([0])[0]["classes"]] == next(iter(utts.values())).words
    # A text vocabulary without one of the words: the word is named.
    words = tmp_path / "words.txt"
    words.write_text("\n".join(w for w in vocab if w != utts[first_id].words[0]) + "\n")
    with pytest.raises(UserError, match=f"word '{utts[first_id].words[0]}' of '{first_id}' is not in the vocabulary"):
        convert_wav_corpus(str(wav_dir), str(transcripts), str(tmp_path / "x.hdf"), vocab=read_vocab(str(words)))


def run_error(capsys, *args) -> str:
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_missing_wav(wav_corpus, tmp_path, capsys):
    wav_dir, transcripts, utts = wav_corpus
    (wav_dir / f"{list(utts)[2]}.wav").unlink()
    out = tmp_path / "out.hdf"
    err = run_error(capsys, wav_dir, transcripts, out)
    assert f"{list(utts)[2]}.wav" in err and f"{transcripts}:5" in err
    assert not out.exists()


def test_unreadable_wav(wav_corpus, tmp_path, capsys):
    wav_dir, transcripts, utts = wav_corpus
    bad = wav_dir / f"{list(utts)[1]}.wav"
    bad.write_bytes(b"not a wav file at all")
    out = tmp_path / "out.hdf"
    err = run_error(capsys, wav_dir, transcripts, out)
    assert str(bad) in err and "unreadable" in err
    assert not out.exists() and list(tmp_path.glob(".out.hdf*")) == []  # no temp file left


@pytest.mark.parametrize(
    "kind, message",
    [("stereo", "2 channels; convert it to mono"), ("8bit", "8-bit samples"), ("rate", "sample rate 8000 Hz")],
)
def test_unsupported_wav_formats(wav_corpus, tmp_path, capsys, kind, message):
    wav_dir, transcripts, utts = wav_corpus
    path = wav_dir / f"{list(utts)[3]}.wav"
    audio = np.zeros(8000)
    write_wav(
        path, audio, rate=8000 if kind == "rate" else 16000, channels=2 if kind == "stereo" else 1,
        width=1 if kind == "8bit" else 2,
    )
    err = run_error(capsys, wav_dir, transcripts, tmp_path / "out.hdf")
    assert message in err and str(path) in err


def test_empty_transcript(wav_corpus, tmp_path, capsys):
    wav_dir, transcripts, utts = wav_corpus
    first = list(utts)[0]
    transcripts.write_text(f"{first}\n")
    err = run_error(capsys, wav_dir, transcripts, tmp_path / "out.hdf")
    assert f"{transcripts}:1" in err and "empty transcript" in err and first in err
    transcripts.write_text("\n# nothing\n")
    assert "has no utterances" in run_error(capsys, wav_dir, transcripts, tmp_path / "out.hdf")


def test_repeated_id_and_missing_folder(wav_corpus, tmp_path, capsys):
    wav_dir, transcripts, utts = wav_corpus
    first, words = list(utts)[0], " ".join(next(iter(utts.values())).words)
    transcripts.write_text(f"{first} {words}\n{first} {words}\n")
    assert "already appears on line 1" in run_error(capsys, wav_dir, transcripts, tmp_path / "out.hdf")
    assert "does not exist" in run_error(capsys, tmp_path / "nowhere", transcripts, tmp_path / "out.hdf")


def _snapshot(*paths):
    return {str(p): p.read_bytes() for p in paths}


@pytest.mark.parametrize("overwrite", [False, True])
def test_out_is_never_an_input(wav_corpus, tmp_path, capsys, overwrite):
    """The transcript list, the --vocab train file, a WAV (also by another name) stay as they are."""
    wav_dir, transcripts, utts = wav_corpus
    train = tmp_path / "train.hdf"
    generate_corpus(str(train), num_seqs=2, seed=4)
    a_wav = wav_dir / f"{next(iter(utts))}.wav"
    (tmp_path / "link-to-text").hardlink_to(transcripts)
    before = _snapshot(transcripts, train, a_wav)
    extra = ["--overwrite"] if overwrite else []
    for out, culprit in [(transcripts, transcripts), (train, train), (a_wav, a_wav), (tmp_path / "link-to-text", transcripts)]:
        err = run_error(capsys, wav_dir, transcripts, out, "--vocab", train, *extra)
        assert f"output '{out}' is the input file '{culprit}'" in err, err
    assert _snapshot(transcripts, train, a_wav) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link-to-text", "text", "train.hdf", "wavs"]


def test_an_existing_out_is_replaced_only_with_overwrite(wav_corpus, tmp_path, capsys):
    wav_dir, transcripts, _ = wav_corpus
    out = tmp_path / "out.hdf"
    out.write_bytes(b"an earlier conversion")
    err = run_error(capsys, wav_dir, transcripts, out)
    assert f"output '{out}' exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"an earlier conversion"
    assert main([str(wav_dir), str(transcripts), str(out), "--overwrite"]) == 0
    assert HDFDataset([str(out)]).num_seqs == 4


def test_careless_inputs_are_one_line_and_write_nothing(wav_corpus, tmp_path, capsys):
    wav_dir, transcripts, utts = wav_corpus
    ids = list(utts)
    out = tmp_path / "out.hdf"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no audio here\n")
    assert "holds no .wav files" in run_error(capsys, empty, transcripts, out)
    assert "does not exist" in run_error(capsys, wav_dir, transcripts, tmp_path / "nope" / "out.hdf")
    assert "is a directory" in run_error(capsys, wav_dir, transcripts, wav_dir)
    # A transcript list that forgets a WAV of the folder: the utterance would silently be lost.
    lines = transcripts.read_text().splitlines()
    transcripts.write_text("\n".join(line for line in lines if not line.startswith(ids[1])) + "\n")
    err = run_error(capsys, wav_dir, transcripts, out)
    assert f"1 WAV file(s) of '{wav_dir}' have no line in '{transcripts}' (first: '{ids[1]}.wav')" in err
    assert "--subset" in err
    assert not out.exists() and not (tmp_path / "nope").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "text", "wavs"]  # no temp file either
    # --subset: the listed utterances only, as asked.
    assert main([str(wav_dir), str(transcripts), str(out), "--subset"]) == 0
    assert HDFDataset([str(out)]).seq_tags == [i for i in ids if i != ids[1]]
    # A line without its WAV (an extra line) names the line and the file.
    transcripts.write_text("\n".join(lines) + "\nspk0-utt9 one two\n")
    err = run_error(capsys, wav_dir, transcripts, tmp_path / "more.hdf")
    assert f"{transcripts}:7: no WAV file" in err and "spk0-utt9.wav" in err
