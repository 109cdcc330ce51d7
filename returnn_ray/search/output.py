"""RETURNN's search output file (``search_output_file``), in its two formats.

``search_output_file_format``:

- ``py``: a Python dict literal by seq tag, in corpus order, one line per seq, which scoring
  scripts read back with ``eval`` or ``ast.literal_eval``. The value is the best hypothesis, or
  with ``search_output_beam = True`` the whole beam ``[(score, hyp), ...]``, best first, laid
  out the way RETURNN's ``better_repr`` writes it (one tuple per line), so files diff cleanly
  against RETURNN's.
- ``txt``: the best hypothesis of each seq, one line each, in corpus order (no tags; the beam
  is not written).

A hypothesis is its label strings joined by single spaces (:func:`labels_to_string`). A path
ending in ``.gz`` is written gzip-compressed, as RETURNN does.

>>> entries = [("seq-0", [(-0.5, "hello world"), (-2.0, "hello word")])]
>>> print(format_search_output(entries, fmt="py", beam=False), end="")
{
'seq-0': 'hello world',
}
>>> print(format_search_output(entries, fmt="py", beam=True), end="")
{
'seq-0': [
(-0.5, 'hello world'),
(-2.0, 'hello word'),
],
}
"""

from __future__ import annotations

import gzip
import math
from typing import Literal, Sequence, get_args

from returnn_ray.atomic import atomic_write

__all__ = ["SearchOutputFormat", "format_search_output", "labels_to_string", "write_search_output"]

SearchOutputFormat = Literal["py", "txt"]
"""The values of ``search_output_file_format``."""

SearchEntry = tuple[str, Sequence[tuple[float, str]]]
"""One seq: its tag and its beam ``[(score, hypothesis), ...]``, best first."""


def labels_to_string(labels: Sequence[int], vocab: Sequence[str] | None) -> str:
    """The hypothesis string of label ids: their vocabulary entries (or, without one, the ids) joined by spaces.

    >>> labels_to_string([2, 0], ["a", "b", "c"]), labels_to_string([2, 0], None)
    ('c a', '2 0')
    """
    if vocab is None:
        return " ".join(str(int(label)) for label in labels)
    for label in labels:
        # A negative id would silently index from the end of the vocabulary.
        if not 0 <= label < len(vocab):
            raise ValueError(f"label id {label} is not in the vocabulary of size {len(vocab)}")
    return " ".join(vocab[label] for label in labels)


def format_search_output(entries: Sequence[SearchEntry], *, fmt: SearchOutputFormat, beam: bool) -> str:
    """The text of a search output file for ``entries`` (in corpus order); see the module docstring."""
    allowed = get_args(SearchOutputFormat)
    if fmt not in allowed:
        raise ValueError(f"search_output_file_format {fmt!r} is not one of {allowed}")
    seen: set[str] = set()
    for tag, hyps in entries:
        if not hyps:
            raise ValueError(f"search output: seq {tag!r} has no hypothesis")
        # Tags name the seqs for scoring; a py dict literal would even keep only the last of equal keys.
        if tag in seen:
            raise ValueError(f"search output: seq tag {tag!r} occurs more than once")
        seen.add(tag)
    if fmt == "txt":
        return "".join(f"{hyps[0][1]}\n" for _, hyps in entries)
    # str(): tags and hyps may be numpy strings, whose repr (`np.str_('a')`) is no plain literal.
    lines = [f"{str(tag)!r}: {_beam_repr(hyps) if beam else repr(str(hyps[0][1]))},\n" for tag, hyps in entries]
    return "{\n" + "".join(lines) + "}\n"


def write_search_output(
    path: str, entries: Sequence[SearchEntry], *, fmt: SearchOutputFormat, beam: bool
) -> None:
    """Write the search output file atomically: a failed search leaves the previous file, never a partial one."""
    text = format_search_output(entries, fmt=fmt, beam=beam)
    atomic_write(path, gzip.compress(text.encode("utf-8")) if path.endswith(".gz") else text)


def _beam_repr(hyps: Sequence[tuple[float, str]]) -> str:
    """``[(score, hyp), ...]`` as RETURNN's ``better_repr`` lays it out: one tuple per line."""
    return "[\n" + "".join(f"({_float_repr(score)}, {str(hyp)!r}),\n" for score, hyp in hyps) + "]"


def _float_repr(score: float) -> str:
    """A score as a plain Python literal (``repr`` of a numpy float would read ``np.float32(...)``)."""
    score = float(score)
    # Like RETURNN's better_repr: `inf` and `nan` are no literals, `float('inf')` at least evals.
    return f"float('{score!r}')" if math.isinf(score) or math.isnan(score) else repr(score)
