"""Decoding for the ``search`` task: CTC beam search, RETURNN's search output file, error rates.

Plain numpy, no Ray and no torch, so decoders and writers are tested in one process.
"""

from returnn_ray.search.ctc import Hypothesis, ctc_beam_search, ctc_greedy
from returnn_ray.search.output import format_search_output, labels_to_string, write_search_output
from returnn_ray.search.wer import edit_distance, error_rate

__all__ = [
    "Hypothesis",
    "ctc_beam_search",
    "ctc_greedy",
    "edit_distance",
    "error_rate",
    "format_search_output",
    "labels_to_string",
    "write_search_output",
]
