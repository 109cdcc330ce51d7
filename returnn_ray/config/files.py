"""The loose RETURNN config: files, command-line overrides, typed access, read tracking.

A config is a flat namespace of keys. Values come from three file formats, picked by content
the way RETURNN does it:

* starts with ``#!`` or the file name ends in ``.py``: Python, executed; every global it
  defines (imports, functions, classes too) becomes a *typed* value;
* starts with ``{``: JSON (``//`` and ``/* */`` comments allowed), never executed;
* anything else: one ``key value`` per line, ``#`` comments, stored as *untyped* strings
  (comma lists split) and converted by the getters (:meth:`Config.int`, ...); never executed.

Command-line options (``++key value`` and RETURNN's short options) are applied before the
files are loaded, so a Python config can read them through the ``config`` object in its
namespace, and again afterwards, so they win (:func:`load_config`).

Python configs run as a real module, :data:`USER_CONFIG_MODULE`, registered in
``sys.modules``. Functions and classes they define therefore pickle *by reference*
(``returnn_ray._user_config.get_model``), with the standard pickle and with Ray's
cloudpickle alike. A worker process unpickles them by importing that module: the file
``returnn_ray/_user_config.py`` replays the driver's config (files and command line, recorded
in the environment variable :data:`WORKER_ENV_VAR`, see :meth:`Config.worker_env`) into its
own namespace (:mod:`returnn_ray.config.workers`). The values the driver set programmatically (:meth:`Config.set`) are not part
of that record; pass them in the pickled task arguments instead.

This is the only place that parses config text; :mod:`returnn_ray.config.settings` turns the
result into typed dataclasses once, and the rest of the package reads those.

>>> c = Config({"learning_rate": 0.1})
>>> c.parse_cmd_args(["++learning_rate", "0.5", "++hdf_files", "a.hdf,b.hdf", "-n", "3"])
>>> c.typed_value("learning_rate"), c.list("hdf_files"), c.int("num_epochs", 5)
(0.5, ['a.hdf', 'b.hdf'], 3)
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import stat
import sys
import types
from typing import Any, Sequence, TypeVar

from returnn_ray.config.command_line import iter_cmd_options
from returnn_ray.errors import ConfigError

T = TypeVar("T")

#: Module name under which the namespace of the Python config files lives (driver and workers).
USER_CONFIG_MODULE = "returnn_ray._user_config"

#: Environment variable that tells a worker process which config to replay (JSON, see
#: :meth:`Config.worker_env`).
WORKER_ENV_VAR = "RETURNN_RAY_CONFIG_FILES"

_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


def to_bool(text: str, *, key: str = "?") -> bool:
    """Reads a bool the way RETURNN's ``to_bool`` does (an int, or true/false/yes/no/on/off).

    >>> to_bool("True"), to_bool("0"), to_bool("off"), to_bool("2")
    (True, False, False, True)
    """
    try:
        return bool(int(text))
    except ValueError:
        pass
    low = text.strip().lower()
    if low in _TRUE_WORDS:
        return True
    if low in _FALSE_WORDS:
        return False
    raise ConfigError(f"config key {key!r}: expected a bool (True/False), got {text!r}")


class Config:
    """A RETURNN config: typed values (Python/JSON files, :meth:`set`) and untyped strings.

    The getters mirror RETURNN's ``Config`` (``value``, ``typed_value``, ``int``, ``bool``,
    ``float``, ``list``, ...), so Python configs that call ``config.int("beam_size", 12)``
    keep working. Every getter records the key as read (:meth:`unread_keys`). Wrong types
    raise :class:`~returnn_ray.errors.ConfigError` naming the key, not an ``AssertionError``.
    """

    def __init__(self, items: dict[str, Any] | None = None, *, _module: types.ModuleType | None = None):
        """``items``: initial typed values; ``_module``: the namespace module to fill (workers)."""
        self._module = _module
        #: Typed values; once a Python file is loaded this *is* the module's ``__dict__``,
        #: so overrides applied later are seen by the config's functions as globals.
        self.typed_dict: dict[str, Any] = _module.__dict__ if _module is not None else {}
        #: Untyped values (line-based files, new keys from the command line): lists of strings.
        self.untyped_dict: dict[str, list[str]] = {}
        #: Every config file loaded, nested ones (``--config``, ``include``) too.
        self.files: list[str] = []
        self._read: set[str] = set()
        #: Keys whose value a Python config set (helper globals are normal there: only likely typos
        #: of known keys are warned about); a JSON, line or ``++`` value of the key removes it.
        self.python_keys: set[str] = set()
        self._history: list[dict[str, Any]] = []  # top-level loads, replayed by workers
        self._depth = 0
        self._loading: dict[str, str] = {}  # real path -> path as given, of the files being loaded
        #: Absolute path -> text of the config files that are not regular files (pipes), read once.
        self.snapshots: dict[str, str] = {}
        if items:
            self.typed_dict.update(items)

    def __repr__(self) -> str:
        return f"<Config files={self.files!r} keys={len(self.keys())}>"

    # ---------------------------------------------------------------- loading

    def load_file(self, path: str | os.PathLike) -> None:
        """Loads one config file; the format is picked by content (see the module docstring).

        Raises :class:`ConfigError` naming ``file:line`` for a syntax or runtime error in a
        Python config, ``file:line:col`` for malformed JSON, ``file:line`` for a malformed line.
        A file that includes itself (directly or through others) is an error naming the chain.
        """
        path = os.fspath(path)
        key = os.path.realpath(path)
        if key in self._loading:
            chain = " -> ".join([*self._loading.values(), path])
            raise ConfigError(f"config file {path} includes itself ({chain}); remove the `include` that loops")
        content = self._read_file(path)
        self._record({"kind": "file", "value": path})
        self.files.append(path)
        self._depth += 1
        self._loading[key] = path
        try:
            start = content.strip()
            if start.startswith("#!") or path.endswith(".py"):
                self._exec_python(path, content)
            elif start.startswith("{"):
                self._load_json(path, content)
            else:
                self._load_lines(path, content)
        finally:
            self._depth -= 1
            del self._loading[key]

    def _read_file(self, path: str) -> str:
        """The text of the config file ``path`` (a UTF-8 byte-order mark dropped).

        A pipe (``/dev/stdin``, ``<(...)``) can be read only once: its text is kept
        (:attr:`snapshots`), used again when this process or a worker loads the same path.
        """
        where = os.path.abspath(path)
        if where in self.snapshots:
            return self.snapshots[where]
        if os.path.isdir(path):
            raise ConfigError(f"config file {path} is a directory; give a config file")
        if not os.path.exists(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            is_pipe = not stat.S_ISREG(os.stat(path).st_mode)
            with open(path, encoding="utf-8-sig") as f:
                content = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        if is_pipe:
            self.snapshots[where] = content
        return content

    def _record(self, step: dict[str, Any]) -> None:
        if self._depth == 0:
            self._history.append({**step, "cwd": os.getcwd()})

    def _ensure_module(self) -> types.ModuleType:
        """The module that holds the Python namespace, registered under :data:`USER_CONFIG_MODULE`."""
        if self._module is None:
            module = types.ModuleType(USER_CONFIG_MODULE, "Namespace of the loaded returnn-ray config files.")
            module.__dict__.update(self.typed_dict)
            self._module = module
            self.typed_dict = module.__dict__
        # The newest Python config owns the name: its functions pickle by reference to it.
        sys.modules[USER_CONFIG_MODULE] = self._module
        package = sys.modules.get(USER_CONFIG_MODULE.rpartition(".")[0])
        if package is not None:
            setattr(package, USER_CONFIG_MODULE.rpartition(".")[2], self._module)
        return self._module

    def _exec_python(self, path: str, content: str) -> None:
        try:
            code = compile(content, path, "exec", dont_inherit=True)
        except SyntaxError as exc:
            raise ConfigError(f"{path}:{exc.lineno}: SyntaxError: {exc.msg}") from exc
        namespace = self._ensure_module().__dict__
        namespace.update(
            {"config": self, "__file__": path, "__name__": USER_CONFIG_MODULE, "__returnn_ray_config__": self}
        )
        before = dict(namespace)
        try:
            exec(code, namespace)
        except Exception as exc:
            line = _innermost_line(exc.__traceback__, path)
            text = " ".join(str(exc).split())
            where = f"{path}:{line}" if line is not None else path
            raise ConfigError(f"{where}: {type(exc).__name__}: {text}" if text else f"{where}: {type(exc).__name__}") from exc
        self.python_keys.update(k for k, v in namespace.items() if k not in before or before[k] is not v)

    def _load_json(self, path: str, content: str) -> None:
        try:
            data = json.loads(_blank_json_comments(content))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a JSON config must be an object {{...}}, got {type(data).__name__}")
        self.update(data)

    def _load_lines(self, path: str, content: str) -> None:
        for lineno, line in enumerate(content.splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split(None, 1)
            if len(parts) != 2:
                raise ConfigError(f"{path}:{lineno}: expected 'key value', got {line!r}")
            try:
                self.add_line(parts[0], parts[1])
            except ConfigError as exc:
                if exc.args and str(exc.args[0]).startswith(f"{path}:"):
                    raise
                raise ConfigError(f"{path}:{lineno}: {exc}") from exc

    def parse_cmd_args(self, args: Sequence[str]) -> None:
        """Applies command-line options: ``++key value``, RETURNN's short options, ``--config FILE``.

        Config file names are not handled here (:func:`load_config` splits them off). A value
        written ``+-0.1`` means ``-0.1``; a value may also start with ``-``. As in RETURNN, the
        short options are applied first, then ``--config`` files, then the ``++`` pairs.

        >>> c = Config({"threshold": 0.0})
        >>> c.parse_cmd_args(["++threshold", "+-0.1", "--task=forward", "-v5"])
        >>> c.typed_value("threshold"), c.value("task"), c.int("log_verbosity", 3)
        (-0.1, 'forward', 5)
        """
        args = list(args)
        self._record({"kind": "args", "value": args})
        options = list(iter_cmd_options(args))
        # RETURNN's order: the short options, then --config files, then the ++key value pairs.
        options.sort(key=lambda item: (item[0] == "--config") + 2 * (item[2] == "++"))
        self._depth += 1
        try:
            for key, value, _ in options:
                if key == "--config":
                    self.load_file(value)
                else:
                    self.add_line(key, value)
        finally:
            self._depth -= 1

    def add_line(self, key: str, value: str) -> None:
        """Sets ``key`` from text, the way RETURNN does for files and ``++key value``.

        A key holding a non-string typed value gets the text read as a Python literal
        (:func:`ast.literal_eval`, never ``eval``); a string stays a string; a new key becomes
        an untyped string, split at commas. The key ``include`` loads the named files.

        >>> c = Config({"net": {}, "name": "x", "flag": False})
        >>> for k, v in [("net", "{'a': 1}"), ("name", "1,2"), ("flag", "true"), ("new", "1,2")]:
        ...     c.add_line(k, v)
        >>> c.typed_value("net"), c.typed_value("name"), c.typed_value("flag"), c.list("new")
        ({'a': 1}, '1,2', True, ['1', '2'])
        """
        self.python_keys.discard(key)
        if key in self.typed_dict:
            old = self.typed_dict[key]
            self.typed_dict[key] = value if isinstance(old, str) else _literal_for(key, value, old)
            return
        parts = value.split(",") if value.find(",") > 0 else [value]
        if key == "include":
            for path in parts:
                self.load_file(path)
            return
        self.untyped_dict[key] = parts

    def set(self, key: str, value: Any) -> None:
        """Sets a typed value (also a global of the Python config namespace)."""
        self.python_keys.discard(key)
        self.typed_dict[key] = value

    def update(self, items: dict[str, Any]) -> None:
        """Sets several typed values."""
        for key, value in items.items():
            self.set(key, value)

    # ---------------------------------------------------------------- reading

    def keys(self) -> list[str]:
        """All keys, typed and untyped, sorted (without marking them read)."""
        return sorted(set(self.typed_dict) | set(self.untyped_dict))

    def raw(self, key: str, default: Any = None) -> Any:
        """The stored value (typed value, or list of strings) without marking the key read."""
        if key in self.typed_dict:
            return self.typed_dict[key]
        return self.untyped_dict.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.typed_dict or key in self.untyped_dict

    def mark_read(self, key: str) -> None:
        """Records ``key`` as read (the getters do this themselves)."""
        self._read.add(key)

    def unread_keys(self) -> list[str]:
        """Keys that no getter has read so far, sorted.

        >>> c = Config({"a": 1, "b": 2}); _ = c.int("a", 0)
        >>> c.unread_keys()
        ['b']
        """
        return [k for k in self.keys() if k not in self._read]

    def has(self, key: str) -> bool:
        """Whether ``key`` is set (typed or untyped)."""
        self._read.add(key)
        return key in self

    def is_typed(self, key: str) -> bool:
        """Whether ``key`` holds a typed value."""
        self._read.add(key)
        return key in self.typed_dict

    def is_true(self, key: str, default: bool = False) -> bool:
        """``bool(value)`` if set, else ``default``."""
        if self.is_typed(key):
            return bool(self.typed_dict[key])
        return self.bool(key, default)

    def is_of_type(self, key: str, types_: type | tuple[type, ...]) -> bool:
        """Whether ``key`` holds a typed value that is an instance of ``types_``."""
        return self.is_typed(key) and isinstance(self.typed_dict[key], types_)

    def get_of_type(self, key: str, types_: type | tuple[type, ...], default: T | None = None) -> T | Any:
        """The typed value if it is an instance of ``types_``, else ``default``."""
        return self.typed_dict[key] if self.is_of_type(key, types_) else default

    def value(self, key: str, default: T = None, index: int | None = None, list_join_str: str = ",") -> str | T:
        """The value as a string (lists joined by ``list_join_str``), or ``default``; like RETURNN."""
        self._read.add(key)
        if key in self.typed_dict:
            v = self.typed_dict[key]
            if index is not None:
                return str(v[index])
            if isinstance(v, (list, tuple)):
                return list_join_str.join(str(x) for x in v)
            return default if v is None else str(v)
        if key in self.untyped_dict:
            parts = self.untyped_dict[key]
            return parts[index] if index is not None else list_join_str.join(parts)
        return default

    def typed_value(self, key: str, default: T = None, index: int | None = None) -> Any | T:
        """The typed value as it is, or ``default`` (untyped values are not seen; like RETURNN)."""
        self._read.add(key)
        v = self.typed_dict.get(key, default)
        if index is not None:
            if isinstance(v, (list, tuple)):
                return v[index]
            if index != 0:
                raise ConfigError(f"config key {key!r}: index {index} into a non-list value {v!r}")
        return v

    def opt_typed_value(self, key: str, default: T = None) -> Any | T:
        """The typed value if there is one, else the untyped string (joined), else ``default``."""
        if key in self.typed_dict:
            return self.typed_value(key)
        return self.value(key, default)

    def int(self, key: str, default: T = None, index: int = 0) -> int | T:
        """The value as an int (untyped strings are parsed), or ``default``."""
        self._read.add(key)
        if key in self.typed_dict:
            v = self.typed_value(key, default, index)
            if v is not None and not isinstance(v, int):  # a bool passes, as in RETURNN
                raise ConfigError(f"config key {key!r}: expected an int, got {v!r}")
            return v
        if key in self.untyped_dict:
            text = self.value(key, None, index)
            try:
                return int(text)
            except ValueError:
                raise ConfigError(f"config key {key!r}: expected an int, got {text!r}") from None
        return default

    def float(self, key: str, default: T = None, index: int = 0) -> float | T:
        """The value as a float (``"inf"`` and other strings are parsed), or ``default``."""
        self._read.add(key)
        v = self.typed_value(key, default, index) if key in self.typed_dict else self.value(key, default, index)
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                raise ConfigError(f"config key {key!r}: expected a float, got {v!r}") from None
        if v is not None and not isinstance(v, (int, float)):
            raise ConfigError(f"config key {key!r}: expected a float, got {v!r}")
        return v

    def bool(self, key: str, default: T = None, index: int = 0) -> bool | T:
        """The value as a bool (ints too; untyped ``true``/``1``/``yes``...), or ``default``."""
        self._read.add(key)
        if key in self.typed_dict:
            v = self.typed_value(key, default, index)
            if isinstance(v, int):
                return bool(v)
            if v is not None and not isinstance(v, bool):
                raise ConfigError(f"config key {key!r}: expected a bool, got {v!r}")
            return v
        if key not in self.untyped_dict:
            return default
        text = self.value(key, None, index)
        return to_bool(text, key=key) if text else default

    def bool_or_other(self, key: str, default: T = None, index: int = 0) -> Any:
        """A typed value as it is; an untyped one as bool if it reads as one, else the string."""
        self._read.add(key)
        if key in self.typed_dict:
            return self.typed_value(key, default, index)
        if key not in self.untyped_dict:
            return default
        text = self.value(key, None, index)
        if not text:
            return default
        try:
            return to_bool(text, key=key)
        except ConfigError:
            return text

    def list(self, key: str, default: list | None = None) -> list:
        """The value as a list (a single typed value becomes ``[value]``), or ``default`` (``[]``)."""
        self._read.add(key)
        default = [] if default is None else default
        if key in self.typed_dict:
            v = self.typed_dict[key]
            if v is None:
                return default
            return list(v) if isinstance(v, (list, tuple)) else [v]
        return list(self.untyped_dict[key]) if key in self.untyped_dict else default

    def int_list(self, key: str, default: list[int] | None = None) -> list[int]:
        """The value as a list of ints."""
        try:
            return [x if isinstance(x, int) and not isinstance(x, bool) else int(x) for x in self.list(key, default)]
        except (TypeError, ValueError):
            raise ConfigError(f"config key {key!r}: expected a list of ints, got {self.raw(key)!r}") from None

    def float_list(self, key: str, default: list[float] | None = None) -> list[float]:
        """The value as a list of floats."""
        try:
            return [float(x) for x in self.list(key, default)]
        except (TypeError, ValueError):
            raise ConfigError(f"config key {key!r}: expected a list of floats, got {self.raw(key)!r}") from None

    # ---------------------------------------------------------------- workers and pickling

    def worker_env(self) -> dict[str, str]:
        """Environment variables that let another process rebuild this config.

        Pass them to Ray workers (``runtime_env={"env_vars": config.worker_env()}``, or
        ``os.environ.update(...)`` before Ray starts its workers). A worker that unpickles a
        function of the config imports :data:`USER_CONFIG_MODULE`, which replays the recorded
        steps: the command-line options and the files, in the original order and directory
        (:mod:`returnn_ray.config.workers`).
        """
        record = {"version": 1, "steps": self._history, "snapshots": self.snapshots}
        return {WORKER_ENV_VAR: json.dumps(record)}

    def __reduce__(self):
        if self._module is None:  # plain data only (JSON, line-based, set())
            return (_new_config, (), self.__dict__.copy())
        if sys.modules.get(USER_CONFIG_MODULE) is self._module:
            return (import_user_config, ())
        raise TypeError(
            "cannot pickle a Config whose Python namespace is not the current "
            f"{USER_CONFIG_MODULE} (another Python config was loaded after it)"
        )


def _new_config() -> Config:
    return Config.__new__(Config)


def import_user_config() -> Config:
    """The config of :data:`USER_CONFIG_MODULE`; unpickling a :class:`Config` calls this.

    Importing that module in a fresh process replays the driver's config
    (:mod:`returnn_ray.config.workers`).
    """
    module = importlib.import_module(USER_CONFIG_MODULE)
    config = module.__dict__.get("__returnn_ray_config__")
    if not isinstance(config, Config):
        raise ConfigError(f"no returnn-ray config in this process: ${WORKER_ENV_VAR} is not set")
    return config


_global_config: Config | None = None


def set_global_config(config: Config | None) -> None:
    """Registers the config of this process (the command line does this once)."""
    global _global_config
    _global_config = config


def get_global_config() -> Config:
    """The config of this process: set by the command line, or replayed in a worker."""
    if _global_config is None:
        if os.environ.get(WORKER_ENV_VAR) and USER_CONFIG_MODULE not in sys.modules:
            importlib.import_module(USER_CONFIG_MODULE)
        if _global_config is None:
            raise ConfigError("no returnn-ray config loaded in this process")
    return _global_config


def load_config(files: Sequence[str], args: Sequence[str] = ()) -> Config:
    """Builds a config from files and command-line options, in RETURNN's order.

    The options are applied first (a Python config can read them through ``config``), then
    each file is loaded, then the options are applied again, so they win.
    """
    config = Config()
    if args:
        config.parse_cmd_args(args)
    for path in files:
        config.load_file(path)
    if args:
        config.parse_cmd_args(args)
    return config


def _literal_for(key: str, text: str, old: Any) -> Any:
    """Reads ``text`` as a Python literal for a key that holds the typed value ``old``."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    if old is None:  # nothing to match: keep the text
        return text
    if isinstance(old, bool) and text.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
        return text.strip().lower() in _TRUE_WORDS
    if isinstance(old, float) and not isinstance(old, bool):
        try:
            return float(text)  # inf, nan
        except ValueError:
            pass
    raise ConfigError(
        f"cannot set config key {key!r} to {text!r}: expected a Python literal of type "
        f"{type(old).__name__}, like the value it holds"
    )


def _innermost_line(tb: types.TracebackType | None, path: str) -> int | None:
    """The line of the innermost traceback frame that runs code of the config file ``path``."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _blank_json_comments(text: str) -> str:
    """Replaces ``//`` and ``/* */`` comments outside strings by spaces, keeping line/column positions.

    >>> _blank_json_comments('{"a": "//x", // c\\n "b": /* y */ 1}')
    '{"a": "//x",     \\n "b":         1}'
    """
    out = list(text)
    i, n = 0, len(text)
    in_string = False
    while i < n:
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_string = False
            i += 1
        elif ch == '"':
            in_string = True
            i += 1
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                out[i] = " "
                i += 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            for j in range(i, end):
                if out[j] != "\n":
                    out[j] = " "
            i = end
        else:
            i += 1
    return "".join(out)
