"""Errors a user can act on.

Everything raised as a :class:`UserError` is printed by the command line as one line
(``returnn-ray: error: <message>``) and exits with code 2; no traceback unless ``++debug True``.
The message names the culprit (file and line, key, dataset, path) and says what to do.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a config, argument or data file the user has to fix."""

    exit_code = 2


class ConfigError(UserError):
    """A malformed config file, override or setting."""


class DataError(UserError):
    """A dataset that cannot be read or does not match the config."""
