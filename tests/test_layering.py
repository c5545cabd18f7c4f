"""The house rules for imports: models/ never imports data/ or training/; config/ never imports
data/ (shared values live in dsvl_exp.constants); the command-line modules (`dsvl_exp/<cli>.py`)
sit on top, imported by no package; and no two parts of the package import each other, through
any chain of imports (a function-level import counts: it is a dependency all the same)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dsvl_exp"
LAYERS = ("inference", "repro", "training", "models", "data", "config", "planning", "harness")


def imported_modules(path: Path) -> set[str]:
    """Absolute dotted names of what `path` imports (relative imports resolved; `from dsvl_exp
    import x` names the submodule x when there is one)."""
    own = ["dsvl_exp", *path.relative_to(PACKAGE).with_suffix("").parts]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(own[:-node.level] + ([node.module] if node.module else [])) if node.level else node.module
            names.update(f"{base}.{alias.name}" if submodule(f"{base}.{alias.name}") else base for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def submodule(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def part_of(dotted: str) -> str | None:
    """The part of the package a module belongs to: its subpackage, or the top-level module itself."""
    pieces = dotted.split(".")
    return pieces[1] if pieces[0] == "dsvl_exp" and len(pieces) > 1 else None


def cli_modules() -> set[str]:
    return {path.stem for path in PACKAGE.glob("*.py") if "__main__" in path.read_text()}


def package_imports() -> dict[str, dict[str, set[str]]]:
    """part -> imported part -> the files that import it."""
    graph: dict[str, dict[str, set[str]]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for module in imported_modules(path):
            target = part_of(module)
            if target and target != source:
                graph.setdefault(source, {}).setdefault(target, set()).add(str(path.relative_to(PACKAGE)))
    return graph


def import_cycles(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """Every chain of parts that leads back to where it started, each found once."""
    cycles, seen = [], set()

    def walk(chain: list[str]) -> None:
        for target in sorted(graph.get(chain[-1], {})):
            if target == chain[0]:
                if frozenset(chain) not in seen:
                    seen.add(frozenset(chain))
                    cycles.append([*chain, target])
            elif target not in chain and target > chain[0]:
                walk([*chain, target])

    for start in sorted(graph):
        walk([start])
    return cycles


@pytest.mark.parametrize("layer, forbidden", [("models", ("dsvl_exp.data", "dsvl_exp.training")),
                                              ("config", ("dsvl_exp.data", "dsvl_exp.training", "dsvl_exp.models"))])
def test_lower_layers_do_not_import_upper_ones(layer, forbidden):
    offenders = {f"{path.relative_to(PACKAGE)}: {module}"
                 for path in (PACKAGE / layer).rglob("*.py")
                 for module in imported_modules(path) if module.startswith(forbidden)}
    assert not offenders


def test_command_line_modules_are_on_top():
    clis = cli_modules()
    assert {"train", "chat", "serve", "evaluate", "export", "diff", "reproduce", "plan", "sweep_report"} <= clis
    assert not {"constants", "errors", "console", "collectives", "process"} & clis
    graph = package_imports()
    offenders = {f"{file} imports the command-line module dsvl_exp.{target}"
                 for source, targets in graph.items() if source not in clis
                 for target, files in targets.items() if target in clis for file in files}
    assert not offenders
    assert not {layer for layer in LAYERS if layer not in graph} - {"config"}  # the walk saw the layers


def test_no_two_parts_of_the_package_import_each_other():
    graph = package_imports()
    cycles = [" -> ".join(cycle) + " (" + "; ".join(sorted(graph[a][b])[0] for a, b in zip(cycle, cycle[1:])) + ")"
              for cycle in import_cycles(graph)]
    assert not cycles
    assert graph["training"]["repro"]  # the walk saw the one allowed direction: the recipe writes the manifest


def test_the_cycle_finder_names_both_parts():
    graph = {"repro": {"training": {"repro/jobs.py"}}, "training": {"repro": {"training/recipe.py"}, "models": {"x"}},
             "models": {}}
    assert import_cycles(graph) == [["repro", "training", "repro"]]
    assert import_cycles({"a": {"b": set()}, "b": {"c": set()}, "c": {"a": set()}}) == [["a", "b", "c", "a"]]


def test_constants_are_the_ones_data_uses():
    from dsvl_exp import constants
    from dsvl_exp.data import collate, template

    assert template.IGNORE_INDEX is constants.IGNORE_INDEX and template.IMAGE_TOKEN is constants.IMAGE_TOKEN
    assert collate.round_up is constants.round_up
    assert [constants.round_up(v, 8) for v in (0, 1, 8, 9)] == [0, 8, 8, 16]
