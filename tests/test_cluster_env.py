"""The Ray workarounds stay in their two places: every Ray environment variable we set is in
returnn_ray/cluster/env.py's table, and every private Ray API is used in
returnn_ray/cluster/ray_internals.py (docs/ray.md lists both)."""

from __future__ import annotations

import ast
import pathlib
import re

from returnn_ray.cluster import env
from returnn_ray.cluster.ray_internals import user_error_in
from returnn_ray.errors import DataError, UserError

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "returnn_ray"


def _code_strings(path: pathlib.Path) -> list[tuple[int, str]]:
    """The string literals of a module's code (docstrings and their doctests left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def _modules(*but: str) -> list[pathlib.Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).as_posix() not in but]


def test_ray_environment_variables_are_named_only_in_the_table():
    found = [
        f"{path.relative_to(PACKAGE)}:{line}: {text}"
        for path in _modules("cluster/env.py")
        for line, text in _code_strings(path)
        if re.fullmatch(r"(RAY|TUNE)_\w+", text)
    ]
    assert not found, "a Ray environment variable outside returnn_ray/cluster/env.py:\n" + "\n".join(found)


def test_the_table_says_why_and_where_for_each_variable():
    names = [v.name for v in env.ALL]
    assert len(set(names)) == len(names)
    for var in env.ALL:
        assert var.name.startswith(("RAY_", "TUNE_")) and var.value and var.reason and var.where and var.seen_on, var
    assert set(env.TRAIN_ENV) <= set(env.SWEEP_ENV) <= set(names)


def test_private_ray_apis_are_used_only_in_ray_internals():
    found = []
    for path in _modules("cluster/ray_internals.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(PACKAGE)}:{node.lineno}: import {m}" for m in modules if m.startswith("ray._")]
        found += [
            f"{path.relative_to(PACKAGE)}:{line}: {text!r}"
            for line, text in _code_strings(path)
            if re.match(r"ray\._", text)
        ]
    assert not found, "a private Ray API outside returnn_ray/cluster/ray_internals.py:\n" + "\n".join(found)


class RayTaskError(Exception):
    """Stands in for ``ray.exceptions.RayTaskError`` (same name, same ``cause``): these tests need no Ray."""

    def __init__(self, text: str, cause: object = None) -> None:
        super().__init__(text)
        self.cause = cause


def test_user_error_in_finds_the_users_error_through_causes_and_ray_wrappers():
    original = DataError("seq 'a' has a nan")
    assert user_error_in(original) is original
    wrapped = RayTaskError("Traceback ...\nreturnn_ray.errors.DataError: seq 'a' has a nan", original)
    try:
        try:
            raise wrapped
        except RayTaskError as exc:
            raise RuntimeError("Training failed") from exc
    except RuntimeError as outer:
        assert user_error_in(outer) is original
    assert user_error_in(RuntimeError("a worker died")) is None


def test_user_error_in_reads_the_last_error_line_when_only_text_is_left():
    text = "Traceback ...\nreturnn_ray.errors.UserError: first\n...\nreturnn_ray.errors.DataError: the last one\n"
    error = user_error_in(RayTaskError(text))
    assert type(error) is DataError and str(error) == "the last one"
    error = user_error_in(RuntimeError("UserCodeException:\nreturnn_ray.errors.NoSuchError: bad"))
    assert type(error) is UserError and str(error) == "bad"
