"""``task = "forward"``: see :mod:`returnn_ray.inference.run`."""

from __future__ import annotations

from returnn_ray.config import Config
from returnn_ray.inference.run import run_inference
from returnn_ray.settings import Settings


def run(settings: Settings, config: Config) -> int:
    return run_inference(settings, config, search=False)
