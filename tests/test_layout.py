"""The package's shape, read from its source (``ast``; nothing of returnn_ray is imported):
no module over 600 lines, no function over 80, and imports that run one way (docs/architecture.md):

    errors → atomic, metrics, cluster/, util/ → config/ → data/ → model/ → training/, inference/
    → sweep/ → tasks/ → cli → experiment/

A module may import its own layer and the layers before it, never a later one: at module level
and inside functions alike. Where the code still breaks a rule, the entry in an allow-list below
says so; each entry is checked to be still needed, so a fix that lands makes its entry fail
until it is deleted.
"""

from __future__ import annotations

import ast
import pathlib
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "returnn_ray"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("atomic", "metrics", "cluster", "util"),
    ("config", "_user_config", ""),  # "": the package's __init__ (it exports the config layer's names)
    ("data",),
    # corpus/: the synthetic and WAV corpora (they write HDF files). search/: CTC search and WER on
    # arrays. frontend, tensor: RETURNN's rf / Tensor for torch-style configs, which build models (they
    # use model.losses); training and inference run them.
    ("model", "corpus", "search", "frontend", "tensor"),
    ("training", "inference"),
    ("sweep",),
    ("tasks",),
    ("cli", "__main__"),
    ("experiment",),
)
"""The layers, first to last; each names the first part of a module's name below ``returnn_ray``."""

ALLOWED_UPWARD_IMPORTS: dict[tuple[str, str], str] = {
    # Empty: an import against the rule needs a reason here, and an issue to mend it.
}
"""(importer, imported) pairs that break the one-way rule today, each with why."""

ALLOWED_LONG_FUNCTIONS: dict[tuple[str, str], str] = {
    # Empty: a longer function needs a reason here.
}
"""(module, function) pairs over :data:`MAX_FUNCTION_LINES` today."""


# -- reading the source ----------------------------------------------------------------------------


def package_modules(root: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
    """Dotted module name → file, for every ``.py`` of ``package`` under ``root``."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: pathlib.Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, module) for every import of the package's own modules in ``name``'s file, at any depth
    (in functions, under ``if TYPE_CHECKING``). ``from pkg import sub`` counts as importing ``pkg.sub``
    when ``sub`` is a module, else as importing ``pkg``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(name, is_package, node.module, node.level)
            found += [(node.lineno, f"{base}.{a.name}" if f"{base}.{a.name}" in known else base) for a in node.names]
    return [(line, module) for line, module in found if _nearest_known(module, known)]


def _absolute(name: str, is_package: bool, module: str | None, level: int) -> str:
    if not level:
        return module or ""
    parts = name.split(".")[: len(name.split(".")) - level + (1 if is_package else 0)]
    return ".".join(parts + ([module] if module else []))


def _nearest_known(module: str, known: set[str]) -> str | None:
    """The module itself if it is one of the package's, else its nearest known parent package."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return None


def layer_of(module: str, package: str = PACKAGE) -> int | None:
    """The index in :data:`LAYERS` of a module of the package; None if no layer names it."""
    rest = module[len(package) + 1:] if module != package else ""
    head = rest.split(".")[0]
    return next((i for i, names in enumerate(LAYERS) if head in names), None)


def upward_imports(root: pathlib.Path, package: str = PACKAGE) -> list[tuple[str, str, int]]:
    """(importer, imported, line) for each import of a later layer by an earlier one."""
    modules = package_modules(root, package)
    known = set(modules)
    found = []
    for name, path in modules.items():
        own = layer_of(name, package)
        for line, imported in imported_modules(name, path, known):
            target = layer_of(_nearest_known(imported, known), package)
            edge = (name, _nearest_known(imported, known), line)
            if own is not None and target is not None and target > own and edge[:2] not in {f[:2] for f in found}:
                found.append(edge)
    return found


def long_functions(root: pathlib.Path, package: str = PACKAGE) -> list[tuple[str, str, int]]:
    """(module, function, lines) for every function or method over :data:`MAX_FUNCTION_LINES`,
    counted from its ``def`` line to its last line."""
    found = []
    for name, path in package_modules(root, package).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append((name, node.name, lines))
    return found


# -- the package -----------------------------------------------------------------------------------


def test_every_module_has_a_layer():
    """A new package or top-level module gets its place in LAYERS (and docs/architecture.md)."""
    missing = [name for name in package_modules(ROOT, PACKAGE) if layer_of(name) is None]
    assert not missing, f"modules in no layer of tests/test_layout.py's LAYERS: {missing}"


def test_no_module_over_600_lines():
    long = {
        name: n
        for name, path in package_modules(ROOT, PACKAGE).items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by what they do): {long}"


def test_no_function_over_80_lines():
    found = long_functions(ROOT)
    new = [f"{m}.{f}: {n} lines" for m, f, n in found if (m, f) not in ALLOWED_LONG_FUNCTIONS]
    assert not new, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(new)
    fixed = sorted(set(ALLOWED_LONG_FUNCTIONS) - {(m, f) for m, f, _ in found})
    assert not fixed, f"under the limit now: delete their entries from ALLOWED_LONG_FUNCTIONS: {fixed}"


def test_imports_run_one_way():
    found = upward_imports(ROOT)
    new = [f"{a} (line {line}) imports {b}" for a, b, line in found if (a, b) not in ALLOWED_UPWARD_IMPORTS]
    assert not new, (
        "imports against the one-way rule (docs/architecture.md): move the shared part below both\n"
        + "\n".join(new)
    )
    fixed = sorted(set(ALLOWED_UPWARD_IMPORTS) - {(a, b) for a, b, _ in found})
    assert not fixed, f"mended: delete their entries from ALLOWED_UPWARD_IMPORTS: {fixed}"


# -- the checks themselves, on a package made up here ----------------------------------------------


def _write(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for rel, text in files.items():
        path = root / PACKAGE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.mark.parametrize(
    "code",
    [
        "from returnn_ray.training.checkpoints import x\n",  # module level, from-import
        "import returnn_ray.training.checkpoints\n",  # module level, plain import
        "from returnn_ray.training import checkpoints\n",  # a submodule by from-import of its package
        "from ..training import checkpoints\n",  # relative
        "def f():\n    from returnn_ray.training.checkpoints import x\n",  # inside a function
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import returnn_ray.training\n",
    ],
)
def test_an_upward_import_in_any_form_is_found(tmp_path, code):
    root = _write(tmp_path, {
        "__init__.py": "", "errors.py": "", "config/__init__.py": "", "config/settings.py": code,
        "training/__init__.py": "", "training/checkpoints.py": "from returnn_ray.config import settings\n",
    })
    assert [(a, b) for a, b, _ in upward_imports(root)] == [
        ("returnn_ray.config.settings", "returnn_ray.training.checkpoints" if "import returnn_ray.training\n" not in code
         else "returnn_ray.training")
    ]


def test_downward_and_same_layer_imports_and_other_packages_pass(tmp_path):
    root = _write(tmp_path, {
        "__init__.py": "", "errors.py": "import os\nimport numpy\n",
        "data/__init__.py": "from returnn_ray.errors import X\nfrom . import base\n", "data/base.py": "",
        "model/__init__.py": "from returnn_ray.data import base\nfrom returnn_ray import errors\n",
        "search/__init__.py": "from returnn_ray.model import y\n",
    })
    assert upward_imports(root) == []


def test_a_long_function_is_found_and_a_short_one_is_not(tmp_path):
    body = "x = 1\n" * (MAX_FUNCTION_LINES - 1)
    code = f"def ok():\n{textwrap.indent(body, '    ')}\n\nclass C:\n    def long(self):\n{textwrap.indent(body, '        ')}        y = 2\n"
    root = _write(tmp_path, {"__init__.py": "", "errors.py": code})
    assert long_functions(root) == [("returnn_ray.errors", "long", MAX_FUNCTION_LINES + 1)]


# -- imports inside functions ----------------------------------------------------------------------

NOTE = "start-up time"
"""What a module that imports inside functions says once (docstring or first 40 lines): why."""

LAZY_ROOTS = ("torch", "ray")
"""Heavy packages whose imports inside functions need that note (as do the package's own modules)."""


def unexplained_function_imports(root: pathlib.Path, package: str = PACKAGE) -> list[tuple[str, int, str]]:
    """(module, line, imported) for each import of the package's own modules, torch or Ray inside a
    function of a module that does not say why (:data:`NOTE` in its docstring or first 40 lines)."""
    found = []
    for name, path in package_modules(root, package).items():
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        if NOTE in (ast.get_docstring(tree) or "") or NOTE in "\n".join(text.splitlines()[:40]):
            continue
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found += [(name, line, m) for line, m in _imports_in(func) if _is_lazy(m, package)]
    return sorted(set(found))


def _imports_in(func: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(func):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, "." * node.level + (node.module or "")))
    return found


def _is_lazy(module: str, package: str) -> bool:
    return module.startswith(".") or module.split(".")[0] in (package, *LAZY_ROOTS)


def test_imports_inside_functions_say_why():
    """An import inside a function only where it saves start-up time, and the module says so once."""
    found = unexplained_function_imports(ROOT)
    assert not found, (
        f"imports inside functions in modules that do not say why ({NOTE!r} in the docstring or first 40"
        " lines): move them to module level, or say once why they stay:\n"
        + "\n".join(f"{m} (line {line}) imports {i}" for m, line, i in found)
    )


@pytest.mark.parametrize(
    ("code", "found"),
    [
        ("def f():\n    import torch\n", True),
        ("def f():\n    from ray import tune\n", True),
        ("class C:\n    def f(self):\n        from returnn_ray.errors import X\n", True),
        ("def f():\n    from . import other\n", True),
        ("def f():\n    import json\n", False),  # the standard library: cheap
        ("import torch\n", False),  # module level
        ("# Imports inside functions: torch loads only when used (start-up time).\ndef f():\n    import torch\n", False),
        ('"""Doc: torch is imported when used (start-up time)."""\ndef f():\n    import torch\n', False),
    ],
)
def test_an_unexplained_import_inside_a_function_is_found(tmp_path, code, found):
    root = _write(tmp_path, {"__init__.py": "", "atomic.py": code})
    assert bool(unexplained_function_imports(root)) is found
