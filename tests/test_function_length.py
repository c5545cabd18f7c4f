"""No function in src/ is longer than 60 lines: a function does one thing, and reads on one screen."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dsvl_exp"
MAX_LINES = 60
# Being shortened in parallel work on the same issue; remove each name once its function is under the limit.
KNOWN_LONG = {"serve.py:build_demo", "models/splice.py:splice_images"}


def long_functions() -> dict[str, int]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    found[f"{path.relative_to(PACKAGE).as_posix()}:{node.name}"] = lines
    return found


def test_no_function_is_longer_than_60_lines():
    assert {name: lines for name, lines in long_functions().items() if name not in KNOWN_LONG} == {}

