"""JSON and line-based configs and ``++key value`` overrides are data, never code; a Python config is code.

Each hostile value reaches the code that reads its key (one config per value, all else the valid
config of the bad-input table), through every way of giving it; no marker file may appear.
"""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path

import pytest

from test_bad_input import BASE, _run, _subst  # tests/ is on sys.path (its conftest.py)


#: Code that would leave the file ``{marker}`` if anything ran it (two ways to write it).
CODE = "__import__('os').system('touch {marker}')"
CODE2 = "open({marker!r}, 'w')"

#: One hostile value per case, everything else the valid BASE config: (how it is given, key, value).
#: ``json``: the value in the JSON config; ``line``: a ``key value`` line of a line config (with the
#: rest of BASE as lines); ``++``: an override on the command line after the JSON config; ``-x`` etc.:
#: a short option. Values with ``{code}`` get CODE, with ``{code2}`` CODE2.
HOSTILE = [
    ("json", "task", "{code}"), ("json", "num_epochs", "{code}"), ("json", "learning_rate", "{code2}"),
    ("json", "device", "{code2}"), ("json", "batch_size", ["{code}"]), ("json", "max_seqs", {"a": "{code}"}),
    ("json", "train", "{code}"), ("json", "train", "Task12AXDataset:num_seqs={code}"),
    ("json", "train", "{{'class': 'Task12AXDataset', 'num_seqs': {code}}}"),
    ("json", "train", {"class": "Task12AXDataset", "num_seqs": "{code}"}),
    ("json", "train", {"class": "{code}"}), ("json", "dev", "{{'class': {code}}}"),
    ("json", "network", {"output": {"class": "softmax", "loss": "ce", "n_out": "{code}"}}),
    ("json", "network", {"output": {"class": "{code}", "loss": "ce"}}), ("json", "network", "{code2}"),
    ("json", "optimizer", {"class": "{code}"}), ("json", "learning_rates", "[{code}]"),
    ("json", "learning_rate_control", "{code}"), ("json", "cleanup_old_models", "{code}"),
    ("json", "extern_data", {"data": {"dim": "{code}"}, "classes": {"dim": 2, "sparse": True}}),
    ("json", "num_outputs", "{code}"), ("json", "log_verbosity", "{code}"),
    ("line", "task", "{code}"), ("line", "num_epochs", "{code}"), ("line", "learning_rate", "{code2}"),
    ("line", "batch_size", "{code}"), ("line", "max_seqs", "{code}"), ("line", "device", "{code2}"),
    ("line", "train", "{code}"), ("line", "train", "{{'class': 'Task12AXDataset', 'num_seqs': {code}}}"),
    ("line", "train", "Task12AXDataset:num_seqs={code}"), ("line", "learning_rates", "{code}"),
    ("line", "include", "{code}"),
    ("++", "batch_size", "{code}"), ("++", "network", "{code2}"), ("++", "learning_rate", "{code}"),
    ("++", "train", "Task12AXDataset:num_seqs={code}"), ("++", "train", "{{'class': 'Task12AXDataset', 'num_seqs': {code}}}"),
    ("++", "optimizer", "{{'class': {code}}}"), ("++", "learning_rates", "[{code2}]"),
    ("-n", "num_epochs", "{code}"), ("-r", "learning_rate", "{code2}"), ("-x", "task", "{code}"),
    ("-b", "batch_size", "{code}"), ("-z", "max_seqs", "{code2}"), ("-u", "device", "{code}"),
]


def _hostile_case(directory: Path, how: str, key: str, value, marker: str) -> list[str]:
    """Writes the case's config into ``directory`` and returns its command line."""

    def fill(v):
        if isinstance(v, str):
            return v.format(code=CODE.format(marker=marker), code2=CODE2.format(marker=marker))
        if isinstance(v, dict):
            return {k: fill(x) for k, x in v.items()}
        return [fill(x) for x in v] if isinstance(v, list) else v

    value = fill(value)
    config = _subst(BASE, str(directory))
    if how == "line":
        lines = [f"{k} {v}" for k, v in config.items() if k not in ("train", "network", key)]
        lines += [f"train {json.dumps(config['train'])}", f"network {json.dumps(config['network'])}"] * (key != "train")
        (directory / "c.config").write_text("\n".join(lines + [f"{key} {value}"]) + "\n")
        return ["c.config"]
    if how == "json":
        config[key] = value
    (directory / "c.json").write_text(json.dumps(config))
    return ["c.json"] + ([f"++{key}", value] if how == "++" else [how, value] if how.startswith("-") else [])


def test_json_line_configs_and_overrides_are_never_executed(tmp_path):
    """Strings that would be code are only ever strings. One hostile key per run, everything else valid,
    so each value reaches the code that reads its key: no run creates the marker file, none ends in a
    traceback, and a refused value is named in the error line."""
    marker = tmp_path / "pwned"

    def run_case(i: int) -> tuple:
        how, key, value = HOSTILE[i]
        directory = tmp_path / f"case{i}"
        directory.mkdir()
        args = _hostile_case(directory, how, key, value, str(marker))
        return HOSTILE[i], _run(args, directory)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run_case, range(len(HOSTILE))))
    for case, proc in results:
        assert not marker.exists(), (case, proc.stderr)
        assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr, (case, proc.stderr)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("returnn-ray: error:")]
        assert proc.returncode == 0 or len(errors) == 1, (case, proc.stderr)
    refused = [case for case, proc in results if proc.returncode == 2]
    assert len(refused) >= len(HOSTILE) - 2, [case for case, proc in results if proc.returncode == 0]


@pytest.mark.parametrize(
    "spec",
    [
        "{{'class': __import__('os').system('touch {m}')}}",
        "{{'class': 'Task12AXDataset', 'num_seqs': open({m!r}, 'w')}}",
        "Task12AXDataset:num_seqs=__import__('os').system('touch {m}')",
        "Task12AXDataset:num_seqs=5,seq_ordering=open({m!r}, 'w')",
        "{{'class': 'Task12AXDataset', **{{'num_seqs': open({m!r}, 'w')}}}}",
        "__import__('os').system('touch {m}'):num_seqs=5",
        "{{'class': 'Task12AXDataset', 'num_seqs': (lambda: open({m!r}, 'w'))()}}",
    ],
)
def test_dataset_strings_holding_code_are_refused_and_never_run(tmp_path, spec):
    from returnn_ray.data.datasets import init_dataset
    from returnn_ray.errors import UserError

    marker = tmp_path / "pwned"
    with pytest.raises(UserError):
        init_dataset(spec.format(m=str(marker)), name="train")
    assert not marker.exists()


def test_python_config_is_code(tmp_path):
    """The contrast: a Python config runs with the user's rights, as RETURNN's do (documented)."""
    marker = tmp_path / "ran"
    (tmp_path / "c.config").write_text(f"#!rnn.py\nopen({str(marker)!r}, 'w').close()\ntask = 'nope'\n")
    proc = _run(["c.config"], tmp_path)
    assert marker.exists() and proc.returncode == 2, proc.stderr
