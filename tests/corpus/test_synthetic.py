"""The synthetic speech corpus: deterministic, read by RETURNN, transcriptions right, lengths, and not trivial."""

from __future__ import annotations

import itertools

import h5py
import numpy as np
import pytest

from returnn_ray.corpus.features import log_mel
from returnn_ray.corpus.synthetic import PHONES, SyntheticCorpus, generate_corpus, main, make_lexicon
from returnn_ray.data.datasets import init_dataset
from returnn_ray.errors import UserError

NUM_SEQS = 40


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("synthetic") / "train.hdf")
    generate_corpus(path, num_seqs=NUM_SEQS, seed=7)
    return path


def read(path):
    with h5py.File(path, "r") as f:
        return {
            "inputs": f["inputs"][...],
            "classes": f["targets/data/classes"][...],
            "tags": [t.decode() if isinstance(t, bytes) else t for t in f["seqTags"][...]],
            "lens": f["seqLengths"][...],
        }


def test_same_seed_gives_identical_data(corpus_file, tmp_path):
    again = str(tmp_path / "again.hdf")
    generate_corpus(again, num_seqs=NUM_SEQS, seed=7)
    a, b = read(corpus_file), read(again)
    assert a["inputs"].tobytes() == b["inputs"].tobytes()
    assert a["classes"].tobytes() == b["classes"].tobytes()
    assert a["tags"] == b["tags"] and np.array_equal(a["lens"], b["lens"])


def test_utterance_depends_only_on_seed_and_index(corpus_file, tmp_path):
    # A shorter corpus of the same seed is a prefix of the longer one.
    short = str(tmp_path / "short.hdf")
    generate_corpus(short, num_seqs=5, seed=7)
    a, b = read(corpus_file), read(short)
    assert b["tags"] == a["tags"][:5]
    assert np.array_equal(b["inputs"], a["inputs"][: len(b["inputs"])])


def test_other_seed_gives_other_data_and_same_vocabulary(corpus_file, tmp_path):
    other = str(tmp_path / "dev.hdf")
    generate_corpus(other, num_seqs=NUM_SEQS, seed=8)
    a, b = read(corpus_file), read(other)
    assert not set(a["tags"]) & set(b["tags"])
    n = min(len(a["inputs"]), len(b["inputs"]))
    assert not np.array_equal(a["inputs"][:n], b["inputs"][:n])
    assert not np.array_equal(a["lens"], b["lens"])
    with h5py.File(corpus_file) as fa, h5py.File(other) as fb:
        assert list(fa["targets/labels/classes"][...]) == list(fb["targets/labels/classes"][...])


def test_returnn_reads_the_file(corpus_file):
    hdf = pytest.importorskip("returnn.datasets.hdf")
    corpus = SyntheticCorpus(seed=7)
    ds = hdf.HDFDataset(files=[corpus_file])
    ds.initialize()
    ds.init_seq_order(epoch=1)
    assert ds.num_seqs == NUM_SEQS
    assert ds.num_inputs == 40
    assert tuple(ds.num_outputs["classes"]) == (len(corpus.vocab), 1)
    assert ds.labels["classes"] == corpus.vocab
    ds.load_seqs(0, NUM_SEQS)
    ours = init_dataset(corpus_file, name="train")  # `train = "train.hdf"` in a config
    mine = ours.get_seqs(list(range(NUM_SEQS)))
    for i in range(NUM_SEQS):
        utt = corpus.utterance(i)
        assert ds.get_tag(i) == utt.tag
        classes = ds.get_data(i, "classes")
        assert [corpus.vocab[c] for c in classes] == utt.words  # the transcription
        feats = ds.get_data(i, "data")
        np.testing.assert_array_equal(feats, corpus.features(utt))
        np.testing.assert_array_equal(feats, mine[i]["data"])
    assert ours.labels["classes"] == corpus.vocab


def test_lengths_in_expected_range():
    corpus = SyntheticCorpus(seed=3)
    utts = [corpus.utterance(i) for i in range(150)]
    frames = np.array([len(corpus.features(u)) for u in utts])
    assert frames.min() >= 20 and frames.max() <= 320
    assert 80 <= frames.mean() <= 180
    num_words = [len(u.words) for u in utts]
    assert min(num_words) == 1 and max(num_words) == 5
    assert all(u.audio.dtype == np.float32 and 0.2 < np.abs(u.audio).max() < 1.0 for u in utts)
    assert {u.speaker for u in utts} == set(range(16))


def test_lexicon_words_share_phones_and_differ_by_one_phone():
    lexicon = make_lexicon(40)
    assert make_lexicon(40) == lexicon and make_lexicon(40, seed=1) != lexicon
    phones_used = [p for phones in lexicon.values() for p in phones]
    assert set(phones_used) == set(PHONES)  # the whole inventory is used ...
    assert all(phones_used.count(p) >= 2 for p in PHONES)  # ... and no phone marks a single word

    def one_apart(a, b):
        if len(a) == len(b):
            return sum(x != y for x, y in zip(a, b)) == 1
        short, long = sorted((a, b), key=len)
        return len(long) == len(short) + 1 and any(long[:i] + long[i + 1 :] == short for i in range(len(long)))

    pairs = [(a, b) for a, b in itertools.combinations(lexicon, 2) if one_apart(lexicon[a], lexicon[b])]
    assert len(pairs) >= 10  # minimal pairs: a model must hear every phone of a word


def test_speakers_vary():
    corpus = SyntheticCorpus(seed=0)
    scales = [s.formant_scale for s in corpus.speakers]
    pitches = [s.f0_hz for s in corpus.speakers]
    assert max(scales) / min(scales) > 1.15 and max(pitches) / min(pitches) > 1.5
    assert SyntheticCorpus(seed=1).speakers != corpus.speakers  # a dev corpus has new speakers


def test_renditions_of_a_word_vary():
    corpus = SyntheticCorpus(seed=5, max_words=1, num_words=4)
    by_word = {}
    for i in range(40):
        utt = corpus.utterance(i)
        by_word.setdefault(utt.words[0], []).append(utt)
    renditions = max(by_word.values(), key=len)
    assert len(renditions) >= 5
    assert len({len(u.audio) for u in renditions}) == len(renditions)  # durations vary
    assert len({u.speaker for u in renditions}) >= 3
    assert len({round(u.snr_db, 3) for u in renditions}) == len(renditions)


def test_words_are_learnable_but_not_trivially_separable():
    """One-word utterances, a linear classifier on the time-pooled log-mel spectrum (mean and std).

    It must beat chance (1/20) by far: the words are there to be learnt. It must also miss
    often: the average spectrum does not give a word away (shared phones, minimal pairs,
    speakers, noise), so a model has to learn the phones and their order. (It scores about 0.53.)
    """
    num_words, num_train = 20, 360
    corpus = SyntheticCorpus(seed=11, max_words=1, num_words=num_words)
    feats, labels = [], []
    for i in range(480):
        utt = corpus.utterance(i)
        spectrum = log_mel(utt.audio, 16000)  # not normalised per utterance: that would remove the mean
        feats.append(np.concatenate([spectrum.mean(axis=0), spectrum.std(axis=0)]))
        labels.append(corpus.word_ids[utt.words[0]])
    x, y = np.array(feats), np.array(labels)
    x = (x - x[:num_train].mean(axis=0)) / x[:num_train].std(axis=0)
    x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    onehot = np.eye(num_words)[y]
    # Ridge regression onto one-hot targets, trained on the first 360, scored on the other 120.
    w = np.linalg.solve(x[:num_train].T @ x[:num_train] + 10 * np.eye(x.shape[1]), x[:num_train].T @ onehot[:num_train])
    accuracy = float(((x[num_train:] @ w).argmax(axis=1) == y[num_train:]).mean())
    assert 0.25 < accuracy < 0.8, accuracy


def test_bad_settings_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="max_words"):
        SyntheticCorpus(seed=0, min_words=3, max_words=2)
    with pytest.raises(UserError, match="num_words"):
        make_lexicon(1)
    with pytest.raises(UserError, match="num_seqs"):
        generate_corpus(str(tmp_path / "x.hdf"), num_seqs=0, seed=0)
    assert not (tmp_path / "x.hdf").exists()


def test_command_line(tmp_path, capsys):
    out = tmp_path / "c.hdf"
    assert main([str(out), "--num-seqs", "6", "--seed", "2", "--num-mels", "24", "--num-words", "12"]) == 0
    assert "6 seqs" in capsys.readouterr().out
    ds = init_dataset(str(out), name="train")
    assert ds.num_seqs == 6 and ds.specs["data"].dim == 24 and ds.specs["classes"].dim == 12
    assert len(ds.labels["classes"]) == 12
    assert main([str(tmp_path / "d.hdf"), "--num-seqs", "0", "--seed", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "num_seqs must be >= 1" in err


def test_num_frames_without_audio_is_the_length_of_the_features():
    corpus = SyntheticCorpus(seed=2)
    assert [corpus.num_frames(i) for i in range(40)] == [len(corpus.features(corpus.utterance(i))) for i in range(40)]
