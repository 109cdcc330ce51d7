"""RETURNN's own demo configs, as RETURNN ships them, for tests that run them unchanged.

RETURNN's licence allows copying it only as a whole, so the demos are not copied into this
repository: they are taken from the source distribution of the pinned ``returnn`` release on PyPI
(its ``demos/`` folder), downloaded once by pip and kept under ``.cache/`` in the checkout.
The version is the installed one, which pyproject.toml pins.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

from tests.skip_or_fail import skip_or_fail

REPO = Path(__file__).resolve().parent.parent


def returnn_version() -> str:
    return version("returnn")


def demos_dir() -> Path:
    """The ``demos/`` folder of the installed RETURNN release's sdist (downloaded on first use).

    Skips (fails under CI=true) when pip cannot fetch it.
    """
    ver = returnn_version()
    target = REPO / ".cache" / f"returnn-{ver}"
    if (target / "demos").is_dir():
        return target / "demos"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        # --no-build-isolation: pip still prepares the sdist's metadata, with the venv's setuptools
        # instead of a fresh one from the index.
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", f"returnn=={ver}", "--no-binary", ":all:", "--no-deps",
             "--no-build-isolation", "-q", "-d", tmp],
            capture_output=True, text=True, timeout=600, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
        archives = list(Path(tmp).glob("returnn-*.tar.gz"))
        if proc.returncode != 0 or not archives:
            skip_or_fail(f"cannot download RETURNN {ver}'s sdist for its demos: {proc.stderr.strip()[-300:]}")
        with tarfile.open(archives[0]) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and "/demos/" in m.name]
            tar.extractall(tmp, members=members, filter="data")
        extracted = Path(tmp) / f"returnn-{ver}"
        try:
            os.rename(extracted, target)  # atomic: a concurrent test sees all of it or none
        except OSError:
            if not (target / "demos").is_dir():
                raise
    return target / "demos"


def demo(name: str) -> Path:
    """One demo config, e.g. ``demo("demo-torch.config")``."""
    path = demos_dir() / name
    assert path.is_file(), f"RETURNN {returnn_version()}'s sdist has no demos/{name}"
    return path
