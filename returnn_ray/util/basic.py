"""What configs import from RETURNN's ``returnn.util.basic``: ``get_login_username`` (used by the
demo configs to build ``/tmp/<user>/...`` paths), ``get_temp_dir`` and ``NotSpecified``.

A compatibility surface: ``from returnn.util.basic import get_login_username`` becomes
``from returnn_ray.util.basic import get_login_username``; the behaviour is RETURNN's.

>>> get_login_username() != ""
True
"""

from __future__ import annotations

import os
import sys

__all__ = ["NotSpecified", "get_login_username", "get_temp_dir"]


class NotSpecified:
    """Sentinel for "no value given" where None is a valid value (RETURNN uses the class itself)."""

    def __init__(self):
        raise TypeError("NotSpecified is a sentinel class, do not instantiate it")


def get_login_username() -> str:
    """The name of the user running this process (a replacement for ``os.getlogin()``, which needs a terminal).

    Falls back to the numeric uid where it has no passwd entry (e.g. a container with a mapped uid), as RETURNN does.
    """
    if sys.platform == "win32":
        return os.getlogin()
    import pwd

    try:
        return pwd.getpwuid(os.getuid())[0]
    except KeyError:
        return str(os.getuid())


def get_temp_dir(*, with_username: bool = True) -> str:
    """``$TMPDIR`` (or ``$TEMP``, ``$TMP``), else ``/var/tmp`` if it exists, else ``/tmp``; plus ``/<user>``."""
    postfix = ("/" + get_login_username()) if with_username else ""
    for name in ("TMPDIR", "TEMP", "TMP"):
        value = os.getenv(name)
        if value:
            return value + postfix
    return ("/var/tmp" if os.path.exists("/var/tmp") else "/tmp") + postfix
