"""Tests of returnn_ray.config (files, command line, workers): the three file formats, overrides, errors, cross-process pickling."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from returnn_ray.config.command_line import split_command_line
from returnn_ray.config import (
    USER_CONFIG_MODULE,
    WORKER_ENV_VAR,
    Config,
    load_config,
)
from returnn_ray.errors import ConfigError, UserError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


# ------------------------------------------------------------------ formats


def test_python_config_with_shebang_defines_typed_values_functions_classes_imports(tmp_path):
    path = write(
        tmp_path,
        "setup.config",
        """
        #!returnn.py
        import math
        learning_rate = 0.01
        network = {"output": {"class": "softmax", "loss": "ce"}}
        def get_model(**kwargs):
            return "model"
        class Helper:
            pass
        """,
    )
    c = load_config([path])
    assert c.typed_value("learning_rate") == 0.01
    assert c.typed_value("network") == {"output": {"class": "softmax", "loss": "ce"}}
    assert c.typed_value("get_model")() == "model"
    assert c.typed_value("Helper").__module__ == USER_CONFIG_MODULE
    assert c.typed_value("math").pi == pytest.approx(3.14159, abs=1e-5)
    assert c.typed_value("__file__") == path
    assert c.files == [path]


def test_python_config_by_py_name_without_shebang(tmp_path):
    path = write(tmp_path, "setup.py", "x = 1 + 2\n")
    assert load_config([path]).typed_value("x") == 3


def test_json_config_is_typed_allows_comments_and_is_never_executed(tmp_path):
    path = write(
        tmp_path,
        "setup.json",
        """
        {
          // a comment
          "batch_size": 1000, /* another */
          "train": {"class": "HDFDataset", "files": ["a.hdf"]},
          "evil": "__import__('os').system('touch PWNED')"
        }
        """,
    )
    c = load_config([path])
    assert c.typed_value("batch_size") == 1000
    assert c.typed_value("train") == {"class": "HDFDataset", "files": ["a.hdf"]}
    assert c.typed_value("evil") == "__import__('os').system('touch PWNED')"


def test_line_config_is_untyped_and_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(
        tmp_path,
        "setup.config",
        """
        # comment line
        task train
        batch_size 2000   # trailing comment
        learning_rate 0.5
        adam true
        train Task12AXDataset:num_seqs=1000
        files a.hdf,b.hdf
        evil __import__('os').system('touch PWNED')
        """,
    )
    c = load_config([path])
    assert not c.is_typed("batch_size")
    assert c.value("task") == "train"
    assert c.int("batch_size") == 2000
    assert c.float("learning_rate") == 0.5
    assert c.bool("adam") is True
    assert c.value("train") == "Task12AXDataset:num_seqs=1000"
    assert c.list("files") == ["a.hdf", "b.hdf"]
    assert c.value("evil") == "__import__('os').system('touch PWNED')"
    assert not (tmp_path / "PWNED").exists()


def test_several_python_configs_share_one_namespace(tmp_path):
    first = write(tmp_path, "a.py", "hidden = 10\n")
    second = write(tmp_path, "b.py", "network = {'l': {'n_out': hidden * 2}}\n")
    c = load_config([first, second])
    assert c.typed_value("network") == {"l": {"n_out": 20}}


def test_include_key_loads_files(tmp_path):
    inner = write(tmp_path, "inner.config", "num_epochs 7\n")
    outer = write(tmp_path, "outer.config", f"include {inner}\nmodel /tmp/m\n")
    c = load_config([outer])
    assert c.int("num_epochs") == 7 and c.files == [outer, inner]


# ------------------------------------------------------------------ overrides


@pytest.fixture
def typed_config(tmp_path) -> str:
    return write(
        tmp_path,
        "typed.config",
        """
        #!rnn.py
        learning_rate = 0.01
        num_epochs = 5
        name = "exp"
        net = {"a": 1}
        use_x = False
        threshold = 0.0
        model = None
        """,
    )


def test_overrides_of_typed_keys_are_python_literals(typed_config):
    c = load_config(
        [typed_config],
        ["++learning_rate", "0.5", "++num_epochs", "7", "++net", "{'b': (1, 2)}", "++use_x", "True",
         "++threshold", "+-0.1", "++name", "12", "++model", "/tmp/model"],
    )
    assert c.typed_value("learning_rate") == 0.5
    assert c.typed_value("num_epochs") == 7
    assert c.typed_value("net") == {"b": (1, 2)}
    assert c.typed_value("use_x") is True
    assert c.typed_value("threshold") == -0.1
    assert c.typed_value("name") == "12"  # the old value is a string: stays a string
    assert c.typed_value("model") == "/tmp/model"  # None has no type: a non-literal stays text


def test_override_of_new_key_is_untyped_and_comma_split():
    c = load_config([], ["++hdf", "a.hdf,b.hdf", "++lr", "+-0.1", "++one", "x"])
    assert not c.is_typed("hdf")
    assert c.typed_value("hdf") is None  # like RETURNN: typed_value does not see untyped keys
    assert c.list("hdf") == ["a.hdf", "b.hdf"] and c.value("hdf") == "a.hdf,b.hdf"
    assert c.float("lr") == -0.1
    assert c.list("one") == ["x"]


def test_bool_and_float_overrides_accept_words(typed_config):
    c = load_config([typed_config], ["++use_x", "true", "++learning_rate", "inf"])
    assert c.typed_value("use_x") is True
    assert c.typed_value("learning_rate") == float("inf")


def test_override_never_evaluates_code(typed_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config([typed_config], ["++net", "__import__('os').system('touch PWNED')"])
    assert not (tmp_path / "PWNED").exists()
    assert "'net'" in str(err.value)


def test_wrong_literal_for_typed_key_names_key_value_and_type(typed_config):
    with pytest.raises(ConfigError) as err:
        load_config([typed_config], ["++learning_rate", "abc"])
    message = str(err.value)
    assert "'learning_rate'" in message and "'abc'" in message and "float" in message


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["++learning_rate"], "'++learning_rate' needs a value"),
        (["++learning_rate", "++num_epochs", "3"], "'++learning_rate' needs a value"),
        (["-n"], "'-n' needs a value"),
        (["-q", "3"], "unknown option '-q'"),
        (["++x", "1", "stray"], "unexpected argument 'stray'"),
    ],
)
def test_bad_command_lines(args, fragment):
    with pytest.raises(ConfigError) as err:
        load_config([], args)
    assert fragment in str(err.value)


def test_short_options_map_to_returnn_keys():
    c = load_config(
        [],
        ["-x", "forward", "-n", "3", "-b", "5000", "-r", "0.1", "-z", "20", "-L", "m.pt",
         "-e", "4", "-u", "gpu", "-v", "5", "--num_epochs=9"],
    )
    assert c.value("task") == "forward"
    assert c.int("num_epochs") == 9  # the later one wins
    assert c.int("batch_size") == 5000
    assert c.float("learning_rate") == 0.1
    assert c.int("max_seqs") == 20
    assert c.value("load") == "m.pt"
    assert c.int("epoch") == 4
    assert c.value("device") == "gpu"
    assert c.int("log_verbosity") == 5


def test_short_option_glued_value_and_config_option(tmp_path):
    extra = write(tmp_path, "extra.config", "max_seqs 3\n")
    c = load_config([], ["-v4", "--config", extra])
    assert c.int("log_verbosity") == 4 and c.int("max_seqs") == 3


def test_plus_plus_pairs_win_over_short_options_like_returnn():
    c = load_config([], ["++learning_rate", "0.5", "-r", "0.1"])
    assert c.float("learning_rate") == 0.5


def test_command_line_is_visible_while_loading_and_wins_afterwards(tmp_path):
    path = write(
        tmp_path,
        "read.config",
        """
        #!returnn.py
        beam = config.int("beam_size", 12)
        seen_epochs = config.int("num_epochs", -1)
        num_epochs = 5
        lr = 0.1
        def get_lr():
            return lr
        """,
    )
    c = load_config([path], ["++beam_size", "4", "++num_epochs", "8", "++lr", "0.5"])
    assert c.typed_value("beam") == 4  # read from the command line during loading
    assert c.typed_value("seen_epochs") == 8
    assert c.typed_value("num_epochs") == 8  # applied again after loading: typed now
    assert c.typed_value("get_lr")() == 0.5  # functions see overrides as their globals


def test_split_command_line():
    assert split_command_line(["a", "b", "-x", "train", "c"]) == (["a", "b"], ["-x", "train", "c"])
    assert split_command_line(["a"]) == (["a"], [])


# ------------------------------------------------------------------ errors


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.config"):
        load_config([str(tmp_path / "nope.config")])


def test_python_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.config", "#!rnn.py\n\nx = 1\ny = (2,\nz = ]\n")
    with pytest.raises(ConfigError) as err:
        load_config([path])
    assert str(err.value).startswith(f"{path}:5: SyntaxError: ")
    assert isinstance(err.value, UserError) and err.value.exit_code == 2


def test_python_runtime_error_names_innermost_config_line(tmp_path):
    path = write(
        tmp_path,
        "boom.config",
        """
        #!rnn.py
        def helper(d):
            return d["missing"]
        x = 1
        y = helper({})
        """,
    )
    with pytest.raises(ConfigError) as err:
        load_config([path])
    assert str(err.value) == f"{path}:3: KeyError: 'missing'"
    assert isinstance(err.value.__cause__, KeyError)


def test_python_runtime_error_is_one_line(tmp_path):
    path = write(tmp_path, "multi.py", "x = 1\nraise ValueError('first\\nsecond')\n")
    with pytest.raises(ConfigError) as err:
        load_config([path])
    assert str(err.value) == f"{path}:2: ValueError: first second"


def test_python_import_error_names_line(tmp_path):
    path = write(tmp_path, "imp.py", "import os\nimport no_such_module_xyz\n")
    with pytest.raises(ConfigError, match=r"imp.py:2: ModuleNotFoundError: No module named 'no_such_module_xyz'"):
        load_config([path])


def test_malformed_json_names_line_and_column(tmp_path):
    path = write(tmp_path, "bad.json", '{\n  "a": 1,\n  "b": oops\n}\n')
    with pytest.raises(ConfigError) as err:
        load_config([path])
    assert str(err.value).startswith(f"{path}:3:8: invalid JSON: ")


def test_malformed_line_names_line(tmp_path):
    path = write(tmp_path, "bad.config", "task train\n\nbatch_size\n")
    with pytest.raises(ConfigError) as err:
        load_config([path])
    assert str(err.value) == f"{path}:3: expected 'key value', got 'batch_size'"


def test_line_config_overriding_typed_key_with_bad_literal_names_line(tmp_path):
    first = write(tmp_path, "a.json", '{"learning_rate": 0.1}')
    second = write(tmp_path, "b.config", "num_epochs 3\nlearning_rate fast\n")
    with pytest.raises(ConfigError) as err:
        load_config([first, second])
    assert str(err.value).startswith(f"{second}:2: cannot set config key 'learning_rate' to 'fast'")


def test_getter_type_errors_name_the_key():
    c = Config({"batch_size": "lots", "flag": [1]})
    c.parse_cmd_args(["++n", "x"])
    with pytest.raises(ConfigError, match="config key 'n': expected an int, got 'x'"):
        c.int("n")
    with pytest.raises(ConfigError, match="config key 'n': expected a bool"):
        c.bool("n")
    with pytest.raises(ConfigError, match="config key 'batch_size': expected an int"):
        c.int("batch_size")


# ------------------------------------------------------------------ read tracking


def test_every_getter_records_reads():
    c = Config({"a": 1, "b": "x", "c": [1, 2], "d": True, "e": 2.0, "f": None})
    c.parse_cmd_args(["++g", "1", "++h", "2"])
    assert c.unread_keys() == ["a", "b", "c", "d", "e", "f", "g", "h"]
    c.int("a"), c.value("b"), c.list("c"), c.bool("d"), c.float("e"), c.typed_value("f"), c.has("g")
    assert c.unread_keys() == ["h"]
    assert c.raw("h") == ["2"] and c.unread_keys() == ["h"]  # raw() does not count


# ------------------------------------------------------------------ pickling across processes

_WORKER = textwrap.dedent(
    """
    import pickle, sys
    get_model, model, config, by_cloudpickle = pickle.loads(sys.stdin.buffer.read())
    import returnn_ray._user_config as ns
    assert isinstance(model, ns.Affine), (type(model), ns.Affine)
    print(model(1.0), get_model()(2.0), by_cloudpickle(), config.typed_value("scale"))
    """
)


def _run_worker(blob: bytes, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", _WORKER], input=blob, capture_output=True, env=env, cwd=cwd, timeout=60
    )


def test_functions_and_classes_of_a_python_config_unpickle_in_another_process(tmp_path):
    from ray import cloudpickle  # what Ray uses: pickles module functions by reference

    conf_dir = tmp_path / "exp"
    conf_dir.mkdir()
    path = write(
        conf_dir,
        "model.config",
        """
        #!returnn.py
        scale = config.float("scale", 1.0)
        class Affine:
            def __init__(self, a):
                self.a = a
            def __call__(self, x):
                return self.a * x * scale
        def get_model(**kwargs):
            return Affine(2.0)
        def describe():
            return f"scale={scale}"
        """,
    )
    old_cwd = os.getcwd()
    os.chdir(conf_dir)
    try:
        config = load_config(["model.config"], ["++scale", "3"])  # relative path, replayed from its dir
    finally:
        os.chdir(old_cwd)
    assert config.typed_value("scale") == 3  # float("3") while loading, then the literal 3 (int), as in RETURNN
    get_model = config.typed_value("get_model")
    by_cloudpickle = cloudpickle.dumps(config.typed_value("describe"))
    assert USER_CONFIG_MODULE.encode() in by_cloudpickle  # by reference, not by value
    blob = pickle.dumps((get_model, get_model(), config, cloudpickle.loads(by_cloudpickle)))
    assert path.endswith("model.config")

    result = _run_worker(blob, config.worker_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split() == ["6.0", "12.0", "scale=3", "3"]


def test_unpickling_without_the_config_env_explains(tmp_path):
    path = write(tmp_path, "f.py", "def get_model():\n    return 1\n")
    blob = pickle.dumps(load_config([path]).typed_value("get_model"))
    env = {k: v for k, v in os.environ.items() if k != WORKER_ENV_VAR}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
        input=blob, capture_output=True, env=env, timeout=60,
    )
    assert result.returncode != 0
    assert WORKER_ENV_VAR in result.stderr.decode()


def test_config_without_python_pickles_as_data(tmp_path):
    path = write(tmp_path, "a.json", '{"x": [1, 2]}')
    c = load_config([path], ["++y", "a,b"])
    back = pickle.loads(pickle.dumps(c))
    assert back.typed_value("x") == [1, 2] and back.list("y") == ["a", "b"]


def test_older_python_config_refuses_to_pickle(tmp_path):
    first = load_config([write(tmp_path, "a.py", "x = 1\n")])
    load_config([write(tmp_path, "b.py", "y = 2\n")])
    with pytest.raises(TypeError, match="another Python config was loaded"):
        pickle.dumps(first)


# ------------------------------------------------------------------ differential against RETURNN


def _returnn_config(files: list[str], args: list[str]):
    returnn_config = pytest.importorskip("returnn.config")
    c = returnn_config.Config()
    c.parse_cmd_args(args)
    for f in files:
        c.load_file(f)
    c.parse_cmd_args(args)
    return c


DIFF_ARGS = [
    "++learning_rate", "0.5", "++num_epochs", "7", "++net", "{'b': (1, 2)}", "++use_x", "True",
    "++threshold", "+-0.1", "++name", "12", "++flags", "[3, 4]", "++new_list", "a,b", "++new_num", "+-3",
    "-x", "forward", "-b", "1000", "-z", "4", "-v", "5", "-u", "cpu", "-r", "0.3",
]
DIFF_KEYS = [
    "learning_rate", "num_epochs", "net", "use_x", "threshold", "name", "flags", "new_list", "new_num",
    "task", "batch_size", "max_seqs", "log_verbosity", "device", "nonexistent",
]


def _observe(c, key):
    out = [c.has(key), c.is_typed(key), c.typed_value(key), c.value(key, None), c.list(key, None)]
    for getter in ("int", "float", "bool"):
        try:
            out.append(getattr(c, getter)(key, None))
        except Exception:  # RETURNN asserts, we raise ConfigError: both must fail
            out.append("fails")
    return out


def test_override_typing_matches_returnn(tmp_path):
    path = write(
        tmp_path,
        "diff.config",
        """
        #!rnn.py
        learning_rate = 0.01
        num_epochs = 5
        name = "exp"
        net = {"a": 1}
        use_x = False
        threshold = 0.0
        flags = [1, 2]
        batch_size = 5000
        """,
    )
    theirs = _returnn_config([path], DIFF_ARGS)
    ours = load_config([path], DIFF_ARGS)
    for key in DIFF_KEYS:
        assert _observe(ours, key) == _observe(theirs, key), key


def test_line_config_reading_matches_returnn(tmp_path):
    path = write(tmp_path, "lines.config", "batch_size 2000\nadam true\nfiles a,b\nlr 0.5  # c\nname x y\n")
    theirs = _returnn_config([path], ["++batch_size", "3000"])
    ours = load_config([path], ["++batch_size", "3000"])
    for key in ["batch_size", "adam", "files", "lr", "name"]:
        assert _observe(ours, key) == _observe(theirs, key), key


# ------------------------------------------------------------------ byte-order mark, pipes, include cycles

BOM = "\ufeff"


def test_a_utf8_byte_order_mark_changes_nothing(tmp_path):
    """Editors on Windows write a BOM first: JSON stays JSON, ``#!`` stays Python, a line config's
    first key is the key."""
    (tmp_path / "c.json").write_text(BOM + '{"batch_size": 400, "net": {"a": 1}}', encoding="utf-8")
    (tmp_path / "c.config").write_text(BOM + "#!rnn.py\nbatch_size = 2 * 200\n", encoding="utf-8")
    (tmp_path / "c.txt").write_text(BOM + "batch_size 400\n", encoding="utf-8")
    for name in ("c.json", "c.config", "c.txt"):
        config = load_config([str(tmp_path / name)])
        assert config.int("batch_size") == 400 and not [k for k in config.keys() if BOM in k], name
        assert config.is_typed("batch_size") == (name != "c.txt"), name
    assert load_config([str(tmp_path / "c.json")]).typed_value("net") == {"a": 1}


def _fifo_with(tmp_path: Path, text: str) -> tuple[str, "threading.Thread"]:
    import threading

    path = str(tmp_path / "config.fifo")
    os.mkfifo(path)

    def write_once():
        with open(path, "w") as f:
            f.write(text)

    writer = threading.Thread(target=write_once, daemon=True)
    writer.start()
    return path, writer


def test_a_config_from_a_pipe_is_read_once_and_replayed_in_workers_from_its_text(tmp_path):
    """``returnn-ray <(gen-config)`` or ``/dev/stdin``: a pipe can be read once. The driver reads it
    once (the command-line options load it twice), a worker replays it from the recorded text."""
    text = "#!rnn.py\nscale = 3.0\ndef describe():\n    return f'scale={scale}'\n"
    path, writer = _fifo_with(tmp_path, text)
    config = load_config([path], ["--config", path])  # the file and the option: two loads, one read
    writer.join(5)
    assert set(config.files) == {path} and len(config.files) == 3  # option, file, option again
    assert config.typed_value("scale") == 3.0
    os.unlink(path)  # a worker cannot read the pipe again: only the recorded text can help
    worker = "import pickle, sys; print(pickle.loads(sys.stdin.buffer.read())())"
    result = subprocess.run(
        [sys.executable, "-c", worker], input=pickle.dumps(config.typed_value("describe")), capture_output=True,
        env={**os.environ, **config.worker_env(), "PYTHONPATH": str(REPO)}, cwd=tmp_path, timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "scale=3.0"


def test_a_config_on_stdin_is_read_by_the_command_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "returnn_ray", "/dev/stdin"], input='{"task": "tran"}', capture_output=True,
        text=True, env=env, cwd=tmp_path, timeout=60,
    )
    assert proc.returncode == 2 and "'tran'" in proc.stderr and "not found" not in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "files, chain",
    [
        ({"a.config": "include a.config\n"}, "a.config -> a.config"),
        ({"a.config": "include b.config\n", "b.config": "x 1\ninclude a.config\n"}, "a.config -> b.config -> a.config"),
        ({"a.config": "include b.json\n", "b.json": '{"include": 1}'}, None),  # a typed key 'include' loads nothing
    ],
)
def test_a_config_that_includes_itself_is_one_error_naming_the_chain(tmp_path, files, chain):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        if chain is None:
            load_config(["a.config"])
            return
        with pytest.raises(ConfigError) as info:
            load_config(["a.config"])
    finally:
        os.chdir(old)
    assert chain in str(info.value) and "includes itself" in str(info.value)
    assert len(str(info.value)) < 300  # not a RecursionError's message or a chain of a thousand files
