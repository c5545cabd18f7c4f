"""The house rules for imports: models/ never imports data/ or training/; config/ never imports
data/ (shared values live in dsvl_exp.constants)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dsvl_exp"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("layer, forbidden", [("models", ("dsvl_exp.data", "dsvl_exp.training")),
                                              ("config", ("dsvl_exp.data", "dsvl_exp.training", "dsvl_exp.models"))])
def test_lower_layers_do_not_import_upper_ones(layer, forbidden):
    offenders = {f"{path.relative_to(PACKAGE)}: {module}"
                 for path in (PACKAGE / layer).rglob("*.py")
                 for module in imported_modules(path) if module.startswith(forbidden)}
    assert not offenders


def test_constants_are_the_ones_data_uses():
    from dsvl_exp import constants
    from dsvl_exp.data import collate, template

    assert template.IGNORE_INDEX is constants.IGNORE_INDEX and template.IMAGE_TOKEN is constants.IMAGE_TOKEN
    assert collate.round_up is constants.round_up
    assert [constants.round_up(v, 8) for v in (0, 1, 8, 9)] == [0, 8, 8, 16]
