"""``task = "search"``: see :mod:`returnn_ray.inference.run`."""

from __future__ import annotations

from returnn_ray.config import Config, Settings
from returnn_ray.errors import ConfigError
from returnn_ray.inference.run import run_inference


def run(settings: Settings, config: Config) -> int:
    if not settings.forward.search_output_file:  # before the dataset and checkpoint are looked at
        raise ConfigError("task search needs `search_output_file` (where the hypotheses go)")
    return run_inference(settings, config, search=True)
