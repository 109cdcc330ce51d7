"""Corpora as RETURNN HDF files: a synthetic speech corpus, and WAV files plus transcripts.

- ``python -m returnn_ray.corpus.synthetic OUT.hdf --num-seqs N --seed S``: see
  :mod:`returnn_ray.corpus.synthetic`.
- ``python -m returnn_ray.corpus.wav WAV_DIR TRANSCRIPTS OUT.hdf``: see :mod:`returnn_ray.corpus.wav`.

Both write ``data`` (log-mel features, :mod:`returnn_ray.corpus.features`) and ``classes``
(word ids, with the vocabulary as labels); a config reads them with ``train = "OUT.hdf"``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["generate_corpus", "SyntheticCorpus", "convert_wav_corpus", "log_mel"]

_EXPORTS = {
    "generate_corpus": "returnn_ray.corpus.synthetic",
    "SyntheticCorpus": "returnn_ray.corpus.synthetic",
    "convert_wav_corpus": "returnn_ray.corpus.wav",
    "log_mel": "returnn_ray.corpus.features",
}


def __getattr__(name: str) -> Any:
    # Imported on first use, so `python -m returnn_ray.corpus.synthetic` does not find its own
    # module already imported by the package (runpy warns about that).
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
