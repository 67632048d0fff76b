"""The studies' scripts (benchmarks/studies/) still import and parse, so a rename in mixfast
breaks CI instead of a study found broken months later; benchmarks/results/ holds data only.

Each .py is imported (spec_from_file_location, never run: its work sits under
`if __name__ == "__main__":`), and every mixfast name it imports, also inside functions, must
exist; an import inside an `except ImportError:` handler is a fallback for older revisions and is
not checked. Each .sh is parsed with `bash -n`.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "benchmarks" / "studies"
RESULTS = ROOT / "benchmarks" / "results"
PY_SCRIPTS = sorted(STUDIES.rglob("*.py"))
SH_SCRIPTS = sorted(STUDIES.rglob("*.sh"))
# Study folders without a results folder, each with its reason.
NO_RESULTS = {"fashion-mnist-full-sl-cpu-2026-12-01": "no data committed (studies/README.md)"}


def _rel(path: Path) -> str:
    return path.relative_to(STUDIES).as_posix()


def _module_name(path: Path) -> str:
    return "mixfast_study_" + re.sub(r"\W", "_", _rel(path).removesuffix(".py"))


def _is_main_guard(node: ast.stmt) -> bool:
    """`if __name__ == "__main__":`"""
    test = node.test if isinstance(node, ast.If) else None
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(
        isinstance(k, ast.Name) and k.id in ("ImportError", "ModuleNotFoundError") for k in kinds
    )


def mixfast_imports(tree: ast.AST) -> Iterator[tuple[str, str | None]]:
    """(module, name) per `from mixfast... import name`, (module, None) per `import mixfast...`,
    anywhere in the file except the bodies of `except ImportError:` handlers."""
    fallback: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                if _catches_import_error(handler):
                    fallback.update(id(n) for stmt in handler.body for n in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) in fallback:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "mixfast":
                yield from ((node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "mixfast":
                    yield alias.name, None


def test_studies_found():
    assert PY_SCRIPTS and SH_SCRIPTS, f"no scripts under {STUDIES}"


@pytest.mark.parametrize("path", PY_SCRIPTS, ids=_rel)
def test_study_script_imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    work = [
        f"line {node.lineno}: {type(node).__name__}"
        for node in tree.body
        if not isinstance(
            node,
            ast.Import
            | ast.ImportFrom
            | ast.FunctionDef
            | ast.ClassDef
            | ast.Assign
            | ast.AnnAssign,
        )
        and not _is_main_guard(node)
        and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))  # docstring
        and not isinstance(node, ast.Try)  # an import with its fallback
    ]
    assert not work, f"{_rel(path)} does work on import; move it under __main__: {work}"

    environ = dict(os.environ)
    spec = importlib.util.spec_from_file_location(_module_name(path), path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        changed = sorted(set(os.environ.items()) ^ set(environ.items()))
    finally:
        os.environ.clear()
        os.environ.update(environ)
    assert not changed, f"importing {_rel(path)} changed os.environ: {changed}"

    missing = []
    for module_name, name in mixfast_imports(tree):
        try:
            imported = importlib.import_module(module_name)
        except ImportError as exc:
            missing.append(f"{module_name} ({exc})")
            continue
        if name is not None and not hasattr(imported, name):
            try:  # `from mixfast.x import submodule`
                importlib.import_module(f"{module_name}.{name}")
            except ImportError:
                missing.append(f"{module_name}.{name}")
    missing = list(dict.fromkeys(missing))
    assert not missing, f"{_rel(path)} imports names mixfast no longer has: {missing}"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("path", SH_SCRIPTS, ids=_rel)
def test_study_shell_script_parses(path: Path):
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"bash -n {_rel(path)}: {done.stderr}"


def test_results_hold_no_scripts():
    scripts = [
        p.relative_to(RESULTS).as_posix()
        for p in RESULTS.rglob("*")
        if p.suffix in (".py", ".sh") and p.is_file()
    ]
    assert not scripts, f"scripts belong in benchmarks/studies/<folder>/, not results/: {scripts}"


def test_each_study_has_its_results_folder():
    folders = sorted(p.name for p in STUDIES.iterdir() if p.is_dir() and p.name != "__pycache__")
    lost = [name for name in folders if not (RESULTS / name).is_dir() and name not in NO_RESULTS]
    assert not lost, f"studies without benchmarks/results/<same name>/: {lost}"
