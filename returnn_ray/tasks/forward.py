"""``task = "forward"``: see :mod:`returnn_ray.inference.run`."""

from __future__ import annotations

from returnn_ray.config import Config, Settings
from returnn_ray.inference.run import run_inference


def run(settings: Settings, config: Config) -> int:
    return run_inference(settings, config, search=False)
