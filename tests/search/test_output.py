"""The search output file: py reads back with ast.literal_eval as {tag: hyp} or {tag: [(score, hyp)]}
(odd characters included) and matches RETURNN's layout; txt is one best hypothesis per line; the
file is replaced atomically; bad formats and entries are ValueErrors."""

from __future__ import annotations

import ast
import gzip
import os

import numpy as np
import pytest

from returnn_ray.errors import UserError
from returnn_ray.search import format_search_output, labels_to_string, write_search_output

ODD_ENTRIES = [
    ("corpus/seq-1", [(-1.25, "hello world"), (-3.5, "hello word")]),
    ("it's \"quoted\"", [(-0.5, 'say "hi" it\'s'), (-0.75, "x")]),
    ("back\\slash\\", [(-2.0, "a\\b \\n")]),
    ("ünï/cödé-日本", [(-4.0, "größe 日本語 😀")]),
    ("a", [(-0.0, "")]),  # an empty hypothesis
]


def test_labels_to_string():
    vocab = ["<blank>", "hello", "world"]
    assert labels_to_string([1, 2, 1], vocab) == "hello world hello"
    assert labels_to_string((np.int64(2),), vocab) == "world"
    assert labels_to_string([], vocab) == ""
    assert labels_to_string([10, 0, 3], None) == "10 0 3"
    assert labels_to_string(np.array([1, 2]), None) == "1 2"
    for bad in (3, -1):
        with pytest.raises(ValueError, match=f"label id {bad} is not in the vocabulary of size 3"):
            labels_to_string([0, bad], vocab)


def test_py_best_round_trips():
    text = format_search_output(ODD_ENTRIES, fmt="py", beam=False)
    assert ast.literal_eval(text) == {tag: hyps[0][1] for tag, hyps in ODD_ENTRIES}
    assert eval(text) == ast.literal_eval(text)
    # One line per seq, in corpus order, between "{" and "}".
    lines = text.splitlines()
    assert lines[0] == "{" and lines[-1] == "}" and len(lines) == len(ODD_ENTRIES) + 2
    assert [ast.literal_eval(line.rstrip(",").split(": ", 1)[0]) for line in lines[1:-1]] == [
        tag for tag, _ in ODD_ENTRIES
    ]


def test_py_beam_round_trips_best_first():
    text = format_search_output(ODD_ENTRIES, fmt="py", beam=True)
    assert ast.literal_eval(text) == {tag: list(hyps) for tag, hyps in ODD_ENTRIES}
    assert list(ast.literal_eval(text)) == [tag for tag, _ in ODD_ENTRIES]  # dict order = corpus order


def test_numpy_values_become_plain_literals():
    # repr(np.float32(1)) is "np.float32(1.0)" and repr(np.str_("a")) "np.str_('a')": no literals.
    entries = [(np.str_("seq"), [(np.float32(-1.5), np.str_("a b")), (np.float64(-2.0), "c")])]
    assert ast.literal_eval(format_search_output(entries, fmt="py", beam=True)) == {"seq": [(-1.5, "a b"), (-2.0, "c")]}
    assert ast.literal_eval(format_search_output(entries, fmt="py", beam=False)) == {"seq": "a b"}


def test_infinite_score_still_evals():
    text = format_search_output([("s", [(-np.inf, "x")])], fmt="py", beam=True)
    assert eval(text) == {"s": [(-np.inf, "x")]}


def test_py_matches_returnn_layout():
    better_repr = pytest.importorskip("returnn.util.basic").better_repr
    for beam in (False, True):
        expected = "{\n" + "".join(
            "%r: %s,\n" % (tag, better_repr(list(hyps) if beam else hyps[0][1])) for tag, hyps in ODD_ENTRIES
        ) + "}\n"
        assert format_search_output(ODD_ENTRIES, fmt="py", beam=beam) == expected


@pytest.mark.parametrize("beam", [False, True])
def test_txt_is_best_hypothesis_per_line(beam):
    entries = [("z", [(-1.0, "last tag first")]), ("a", [(-1.0, "best"), (-2.0, "second")]), ("m", [(0.0, "")])]
    assert format_search_output(entries, fmt="txt", beam=beam) == "last tag first\nbest\n\n"


@pytest.mark.parametrize("fmt", ["py", "txt"])
def test_no_seqs(fmt):
    assert format_search_output([], fmt=fmt, beam=False) == ("{\n}\n" if fmt == "py" else "")


def test_invalid_entries():
    with pytest.raises(ValueError, match=r"search_output_file_format 'json' is not one of \('py', 'txt'\)"):
        format_search_output(ODD_ENTRIES, fmt="json", beam=False)
    with pytest.raises(ValueError, match="seq 'b' has no hypothesis"):
        format_search_output([("a", [(0.0, "x")]), ("b", [])], fmt="txt", beam=False)
    with pytest.raises(ValueError, match="seq tag 'a' occurs more than once"):
        format_search_output([("a", [(0.0, "x")]), ("b", [(0.0, "y")]), ("a", [(0.0, "z")])], fmt="py", beam=False)


@pytest.mark.parametrize("fmt", ["py", "txt"])
def test_write_plain_and_gzip(tmp_path, fmt):
    expected = format_search_output(ODD_ENTRIES, fmt=fmt, beam=True)
    write_search_output(str(tmp_path / "out"), ODD_ENTRIES, fmt=fmt, beam=True)
    assert (tmp_path / "out").read_text(encoding="utf-8") == expected
    write_search_output(str(tmp_path / "out.gz"), ODD_ENTRIES, fmt=fmt, beam=True)
    with gzip.open(tmp_path / "out.gz", "rt", encoding="utf-8") as f:
        assert f.read() == expected


class Unprintable(str):
    """A hypothesis that fails when the file is being formatted, after other seqs went fine."""

    def __str__(self) -> str:
        raise RuntimeError("cannot format this hypothesis")


@pytest.mark.parametrize("fmt", ["py", "txt"])
def test_failed_write_leaves_no_file(tmp_path, fmt):
    path = tmp_path / "search_out"
    entries = [("ok", [(0.0, "fine")]), ("bad", [(0.0, Unprintable("x"))])]
    with pytest.raises(RuntimeError, match="cannot format"):
        write_search_output(str(path), entries, fmt=fmt, beam=False)
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "search_out"
    write_search_output(str(path), ODD_ENTRIES[:1], fmt="py", beam=False)
    before = path.read_text()
    with pytest.raises(RuntimeError):
        write_search_output(str(path), [("bad", [(0.0, Unprintable("x"))])], fmt="py", beam=False)
    assert path.read_text() == before and os.listdir(tmp_path) == ["search_out"]
    write_search_output(str(path), ODD_ENTRIES[1:2], fmt="py", beam=False)
    assert ast.literal_eval(path.read_text()) == {ODD_ENTRIES[1][0]: ODD_ENTRIES[1][1][0][1]}


def test_missing_directory_is_a_user_error(tmp_path):
    path = tmp_path / "no-such-dir" / "search_out"
    with pytest.raises(UserError, match="no-such-dir"):
        write_search_output(str(path), ODD_ENTRIES, fmt="py", beam=False)
    assert os.listdir(tmp_path) == []
