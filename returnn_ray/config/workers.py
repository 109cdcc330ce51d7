"""How a config crosses to another process (Ray workers).

A Python config runs as the module :data:`~returnn_ray.config.files.USER_CONFIG_MODULE`, so its
functions and classes pickle *by reference* (``returnn_ray._user_config.get_model``), with
the standard pickle and Ray's cloudpickle alike. To unpickle them, a fresh process imports
that name: the file ``returnn_ray/_user_config.py`` calls :func:`populate_worker_module`,
which replays the driver's config, recorded by :meth:`Config.worker_env` in
:data:`~returnn_ray.config.files.WORKER_ENV_VAR` (JSON: the command-line options and files, with
the directory each was loaded from), into that very module. The worker thus re-executes the
config files (their top-level code runs once per worker process) and gets the same namespace
as the driver, overrides included.
"""

from __future__ import annotations

import json
import os
import sys
import types
from typing import Any, Mapping

from returnn_ray.config.files import USER_CONFIG_MODULE, WORKER_ENV_VAR, Config, set_global_config
from returnn_ray.errors import ConfigError


def replay(config: Config, record: dict[str, Any]) -> None:
    """Repeats on ``config`` the loads recorded by :meth:`Config.worker_env` (a pipe's text from
    the record: it cannot be read again)."""
    config.snapshots.update(record.get("snapshots", {}))
    for step in record.get("steps", []):
        cwd = step.get("cwd")
        here = os.getcwd()
        # Same directory as in the driver when it exists here: relative paths, and values
        # a config derives from __file__, come out the same.
        go_there = bool(cwd) and os.path.isdir(cwd)
        if go_there:
            os.chdir(cwd)
        try:
            if step["kind"] == "file":
                path = step["value"]
                if not go_there and cwd and not os.path.isabs(path):
                    path = os.path.join(cwd, path)
                config.load_file(path)
            elif step["kind"] == "args":
                config.parse_cmd_args(step["value"])
            else:
                raise ConfigError(f"${WORKER_ENV_VAR}: unknown step {step!r}")
        finally:
            if go_there:
                os.chdir(here)


def populate_worker_module(module: types.ModuleType) -> None:
    """Fills :data:`USER_CONFIG_MODULE` in a fresh process from :data:`WORKER_ENV_VAR`.

    Called by ``returnn_ray/_user_config.py`` when a worker imports it (typically while
    unpickling a function defined in a Python config); the replayed config becomes the
    process's global config. Without the variable the module stays empty, and a lookup in it
    (or pickle's error message, which shows the module) says what is missing.
    """
    text = os.environ.get(WORKER_ENV_VAR)
    if not text:
        module.__class__ = _EmptyUserConfigModule
        return
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"${WORKER_ENV_VAR} is not valid JSON: {exc}") from exc
    module.__returnn_ray_env__ = text
    config = Config(_module=module)
    replay(config, record)
    set_global_config(config)


def use_worker_config(env: Mapping[str, str]) -> None:
    """Make this worker process unpickle functions of the config recorded in ``env``.

    Call before unpickling anything from the driver. Ray reuses worker processes, so one may
    already hold another run's config: that module is dropped and rebuilt on next use.
    """
    text = env.get(WORKER_ENV_VAR)
    module = sys.modules.get(USER_CONFIG_MODULE)
    if module is not None and getattr(module, "__returnn_ray_env__", None) != text:
        del sys.modules[USER_CONFIG_MODULE]
    if text:
        os.environ[WORKER_ENV_VAR] = text
    else:
        os.environ.pop(WORKER_ENV_VAR, None)


class _EmptyUserConfigModule(types.ModuleType):
    """:data:`USER_CONFIG_MODULE` in a process that was not told which config to replay."""

    _why = f"no returnn-ray config in this process: ${WORKER_ENV_VAR} is not set; pass Config.worker_env() to it"

    def __repr__(self) -> str:  # pickle's "Can't get attribute 'f' on <module ...>" shows this
        return f"<module {self.__name__!r} ({self._why})>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"{self.__name__} has no attribute {name!r}: {self._why}")
