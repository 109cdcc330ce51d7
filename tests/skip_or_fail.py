"""What a test does when something it needs is missing: skip on a developer's machine, fail in CI.

CI (``CI=true``, as .ci/run is started) must show every claim the suite makes, so a missing tool,
package or condition there is a failure that names it, never a silent skip.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def skip_or_fail(reason: str) -> None:
    """``pytest.skip(reason)``, or with ``CI=true`` ``pytest.fail`` with the same reason."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: this test must run in CI, not skip)", pytrace=False)
    pytest.skip(reason)
