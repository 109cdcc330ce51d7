"""returnn_ray: run RETURNN experiment configs on Ray.

The public surface, for config authors and scripts, is what :data:`__all__` lists, plus old
import paths of configs (``returnn_ray.frontend`` and ``returnn_ray.tensor`` are RETURNN's
``returnn.frontend`` / ``returnn.tensor``; configs should import those), ``returnn_ray.util.basic``,
and for experiment scripts such as ``experiments/asr.py``: ``returnn_ray.experiment.stages`` (returnn-ray
commands as timed stages), ``returnn_ray.experiment.warm_start`` and ``returnn_ray.cluster.head`` (a private
Ray head). Every other module is internal. Importing the package is cheap (no torch, no Ray).
"""

from returnn_ray.config import Config, Settings, load_config, load_settings
from returnn_ray.errors import ConfigError, DataError, UserError

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Config",
    "load_config",
    "Settings",
    "load_settings",
    "UserError",
    "ConfigError",
    "DataError",
]
