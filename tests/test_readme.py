"""The README's config reference lists every key the code reads, as the code documents it."""

from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_config_reference_in_readme_is_current():
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts" / "update_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (ROOT / "README.md").read_text()
    assert module.START in text and module.END in text
    assert module.with_reference(text) == text, "README config reference is stale: run scripts/update_readme.py"
