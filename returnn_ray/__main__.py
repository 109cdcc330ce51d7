"""``python -m returnn_ray CONFIG [++key value ...]``: the same as the ``returnn-ray`` command."""

from returnn_ray.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
