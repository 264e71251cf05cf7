"""The code's shape (issue: a house that shows its plan): short functions, named steps."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "scarkids"
#: code lines of a function, its docstring not counted
MAX_LINES = 80


def long_functions() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node) or ""
            n = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                n -= first.end_lineno - first.lineno + 1
            if n > MAX_LINES and "Long:" not in doc:
                out.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_no_function_over_80_lines_unless_its_docstring_says_why():
    assert long_functions() == [], "split these, or say why in a 'Long:' sentence"
