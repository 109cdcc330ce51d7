"""The config layer: config files and the command line in, typed settings out.

The bottom layer of the package (config → data → model → training/inference → tasks → cli):
the other layers import what this file exports. It imports none of them.

* :mod:`.files`: :class:`Config`, the loose RETURNN config read from Python, JSON or line
  files and ``++key value`` overrides; the process's global config.
* :mod:`.command_line`: RETURNN's command-line grammar (config files, then options).
* :mod:`.workers`: how a Python config is rebuilt in another process (Ray workers).
* :mod:`.settings`: :class:`Settings`, every known key read once into frozen dataclasses.
* :mod:`.validators`: checks and bounds of training keys (``cleanup_old_models``, the
  learning-rate control keys, ``MAX_LEARNING_RATE``) that training reuses.
* :mod:`.reference`: the README's config reference, rendered from the settings.

A Python config runs as the module ``returnn_ray._user_config`` (a file outside this package,
since pickles name it).
"""

from returnn_ray.config.files import (
    USER_CONFIG_MODULE,
    WORKER_ENV_VAR,
    Config,
    get_global_config,
    load_config,
    set_global_config,
)
from returnn_ray.config.settings import KNOWN_KEYS, Settings, load_settings, warn_unread_keys

__all__ = [
    "KNOWN_KEYS",
    "USER_CONFIG_MODULE",
    "WORKER_ENV_VAR",
    "Config",
    "Settings",
    "get_global_config",
    "load_config",
    "load_settings",
    "set_global_config",
    "warn_unread_keys",
]
