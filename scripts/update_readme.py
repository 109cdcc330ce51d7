"""Rewrite the README's config reference from the settings classes.

    .venv/bin/python scripts/update_readme.py
"""

from __future__ import annotations

import pathlib
import re

from returnn_ray.config.reference import config_reference_markdown

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def with_reference(text: str) -> str:
    """``text`` with the part between the markers replaced by the generated reference."""
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    return pattern.sub(lambda _: f"{START}\n{config_reference_markdown().strip()}\n{END}", text)


if __name__ == "__main__":
    README.write_text(with_reference(README.read_text()))
