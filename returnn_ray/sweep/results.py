"""What a finished sweep leaves: a table of trials, the best variant as a config, a plot.

Everything is read back from the trials' own ``learning_rates`` files (RETURNN's format), so the
table also covers trials of an earlier, interrupted run of the sweep.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import threading
from typing import Any, Sequence

from returnn_ray.atomic import atomic_write
from returnn_ray.sweep.space import VARIANT_KEY
from returnn_ray.training.lr_control import error_key_for_scores
from returnn_ray.training.lr_file import load_learning_rate_file


@dataclasses.dataclass
class TrialSummary:
    name: str
    directory: str
    values: dict[str, Any]
    status: str
    """``done``, ``stopped early`` (by the scheduler), or ``error: <message>``."""
    scores: dict[int, float]
    """Epoch -> the sweep metric."""
    metric: str | None


def metric_per_epoch(lr_file: str, metric: str | None) -> tuple[dict[int, float], str | None]:
    """``{epoch: value}`` of ``metric`` (None: the key newbob picks) from a learning_rate_file."""
    if not os.path.exists(lr_file):
        return {}, metric
    epochs = load_learning_rate_file(lr_file)
    out: dict[int, float] = {}
    for epoch, data in sorted(epochs.items()):
        scores = {k: v for k, v in data.error.items() if not k.startswith(":meta:")}
        key = metric or error_key_for_scores(scores)
        if key in scores:
            out[epoch], metric = float(scores[key]), key
    return out, metric


def ranked(trials: Sequence[TrialSummary], mode: str) -> list[TrialSummary]:
    """Best first by the best epoch's metric (``mode`` min or max); trials without a score last."""
    sign = 1.0 if mode == "min" else -1.0

    def key(t: TrialSummary):
        best = best_epoch(t, mode)
        return (best is None, sign * best[1] if best else 0.0, t.name)

    return sorted(trials, key=key)


def best_epoch(t: TrialSummary, mode: str) -> tuple[int, float] | None:
    finite = [(e, v) for e, v in t.scores.items() if math.isfinite(v)]
    if not finite:
        return None
    return (min if mode == "min" else max)(finite, key=lambda ev: ev[1])


def format_table(trials: Sequence[TrialSummary], mode: str) -> str:
    """A plain-text table, best trial first."""
    keys = sorted({k for t in trials for k in t.values})
    header = ["#", *keys, "best epoch", "best " + (next((t.metric for t in trials if t.metric), None) or "score"), "epochs", "status"]
    rows = []
    for i, t in enumerate(ranked(trials, mode), 1):
        best = best_epoch(t, mode)
        cells = [str(i)] + [_short(t.values.get(k, "")) for k in keys]
        cells += [str(best[0]) if best else "-", f"{best[1]:.4f}" if best else "-", str(len(t.scores)), t.status]
        rows.append(cells)
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return os.path.basename(text) if "/" in text else text


def best_config_text(best: TrialSummary, files: Sequence[str], args: Sequence[str], mode: str) -> str:
    """A ready-to-run Python config: the trial's config files, then its ``++`` arguments.

    Its ``model`` and ``learning_rate_file`` point into the trial's directory, so
    ``returnn-ray best.config ++task forward`` uses the winning model right away.
    """
    b = best_epoch(best, mode)
    lines = [
        "#!returnn.py",
        f"# The best trial of a returnn-ray sweep: {json.dumps(best.values, default=repr)}",
        f"# {best.metric} {b[1]:.6g} at epoch {b[0]} ({best.directory})" if b else "# (no score)",
        "# Run it with: returnn-ray <this file>  (++task forward to use the trained model)",
        "import ast as _ast",
        "import json as _json",
        "",
        "",
        "def _typed(text):  # a `key value` line's value, typed as returnn-ray types ++key value",
        "    try:",
        "        return _ast.literal_eval(text)",
        "    except (ValueError, SyntaxError):",
        "        return text",
        "",
        "",
    ]
    for path in files:
        path = os.path.abspath(path)
        kind = _config_kind(path)
        if kind == "python":
            lines += [f"__file__ = {path!r}", "exec(compile(open(__file__).read(), __file__, 'exec'))"]
        elif kind == "json":
            lines.append(f"globals().update(_json.load(open({path!r})))")
        else:
            lines += [
                f"for _line in open({path!r}):  # a `key value` file",
                "    _key, _, _value = _line.strip().partition(' ')",
                "    if _key and not _key.startswith('#'):",
                "        globals()[_key] = _typed(_value.strip())",
            ]
    lines.append("")
    for i in range(0, len(args) - 1, 2):
        key, value = args[i][2:], args[i + 1]
        lines.append(f"{key} = {_literal(value)}")
    return "\n".join(lines) + "\n"


def _literal(text: str) -> str:
    import ast

    try:
        return repr(ast.literal_eval(text))
    except (ValueError, SyntaxError):
        return repr(text)


def _config_kind(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".py") or text.startswith("#!"):
        return "python"
    try:
        json.loads(text)
        return "json"
    except ValueError:
        return "lines"


def _pyplot():
    """matplotlib's pyplot on its file backend; None if matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def import_plot_in_background() -> threading.Thread:
    """Import matplotlib while the trials run: the driver waits on them anyway, and importing it
    after the last trial (0.4-0.7 s on a 2-core machine) made the sweep that much longer. Join
    the thread before the process exits (matplotlib's first import builds a font cache)."""
    thread = threading.Thread(target=_pyplot, name="returnn-ray-import-matplotlib", daemon=True)
    thread.start()
    return thread


def write_plot(path: str, trials: Sequence[TrialSummary]) -> bool:
    """Dev score per epoch of every trial as a PNG; False if matplotlib is not installed."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for t in trials:
        if t.scores:
            epochs = sorted(t.scores)
            label = ", ".join(f"{k}={_short(v)}" for k, v in t.values.items() if k != VARIANT_KEY) or t.name
            if VARIANT_KEY in t.values:
                label = f"{_short(t.values[VARIANT_KEY])} {label}".strip()
            ax.plot(epochs, [t.scores[e] for e in epochs], marker="o", label=label + ("" if t.status == "done" else f" ({t.status.split(':')[0]})"))
    metric = next((t.metric for t in trials if t.metric), "score")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch, {len(trials)} trials")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return True
