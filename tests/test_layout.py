"""The package layout (DESIGN §1), read from the source with `ast`: data flows one way, and modules stay small.

* `slide_io` and `reports` never import torch, `zwsi` or `validation`;
* nothing under `zwsi/` imports `validation`, except the `zwsi validate` command;
* no module over 600 lines and no function over 80 lines outside `benchmarks/`, unless a ``# long: <reason>``
  comment stands on the line above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("zwsi", "slide_io", "reports", "validation", "tests", "examples")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
LONG_REASON = "# long:"


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO_ROOT / folder).rglob("*.py"))


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in a file, at any depth (function-level imports too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(REPO_ROOT)}:{line}"


@pytest.mark.parametrize("package", ["slide_io", "reports"])
def test_slide_io_and_reports_import_neither_torch_nor_zwsi_nor_validation(package: str) -> None:
    bad = [f"{where(p, line)} imports {name}" for p in python_files(package) for line, name in imported_modules(p)
           if name in ("torch", "zwsi", "validation")]
    assert bad == []


def test_only_the_validate_command_imports_validation_under_zwsi() -> None:
    allowed = REPO_ROOT / "zwsi" / "commands" / "validate.py"
    bad = [f"{where(p, line)} imports validation" for p in python_files("zwsi") if p != allowed
           for line, name in imported_modules(p) if name == "validation"]
    assert bad == []
    assert any(name == "validation" for _, name in imported_modules(allowed))  # the check looks at the right file


def test_modules_and_functions_stay_small_or_say_why() -> None:
    too_long = []
    for path in python_files(*PACKAGES):
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(REPO_ROOT)}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines), str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            reason = lines[first - 2].strip().startswith(LONG_REASON) if first >= 2 else False
            if length > MAX_FUNCTION_LINES and not reason:
                too_long.append(f"{where(path, node.lineno)} {node.name}(): {length} lines")
    assert too_long == [], f"split these, or put a '{LONG_REASON} <reason>' line above the function"


def test_the_layout_checks_can_fail(tmp_path: Path) -> None:
    """The import scan sees imports inside functions and `from` imports; the size scan sees a reason line."""
    probe = tmp_path / "probe.py"
    probe.write_text("import os\n\ndef f():\n    from torch import nn\n    import validation.pipeline\n")
    assert sorted(imported_modules(probe)) == [(1, "os"), (4, "torch"), (5, "validation")]
