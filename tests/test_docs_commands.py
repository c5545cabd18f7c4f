"""Every command the documents show still composes, so the docs cannot drift from the CLI.

The commands are those of README.md, docs/**/*.md and experiments/README.md (read as
tests/test_readme_commands.py reads them) that invoke `dsvl_exp.<command>` or a `dsvl-*` console
script: `python -m dsvl_exp.X ...`, also after `cd ... &&`, environment assignments, `torchrun ... -m`
or `deepspeed ... --module`. Nothing trains or loads a model here:

- train: `--cfg job` is added, so Hydra composes the config and prints it without running the task;
  an unknown key, a removed option or a wrong closed choice fails composition (exit status 2). A
  multirun (`-m`) is expanded by Hydra's basic sweeper and every job is composed.
- plan: its own flags are parsed by its parser (a flag it does not know is left over, and refused
  here), the rest are composed as train's overrides.
- every other command: its argument parser parses the arguments as written (argparse refuses an
  unknown flag or a value outside `choices` with exit status 2), then the command is stopped
  before it does anything. `--help` alone would not do: argparse prints the help and exits 0
  before it looks at the other arguments.
"""

from __future__ import annotations

import argparse
import importlib
import re
import runpy
import shlex
import sys
import warnings
from importlib.metadata import entry_points

import pytest

from test_readme_commands import command_lines

# Lines that name a command or show a pattern rather than a command to type (placeholders that
# are not arguments, shell completion).
NOT_COMMANDS = {
    "dsvl-*": "a pattern naming every console script",
    "dsvl-train zero=<TAB>": "keys typed at a shell with completion installed",
    "python -m dsvl_exp.train experiment=<name>": "a pattern: <name> is the user's experiment",
    "dsvl-export": "names the console script in prose (its required --out is not given)",
    "python -m dsvl_exp.reproduce": "names the command in prose (its run directory is not given)",
}
PLACEHOLDERS = {" [--out DIR]": "", "<sweep dir>": "SWEEP_DIR"}
TRAIN_MODULES = {"dsvl_exp.train"}
PLAN_MODULES = {"dsvl_exp.plan"}


@pytest.fixture(autouse=True)
def hydra_config_cleared():
    """Composing in this process leaves Hydra's HydraConfig set: a later test in the same process
    would take itself for a Hydra job (repro/jobs.py reads it)."""
    from hydra.core.hydra_config import HydraConfig

    yield
    HydraConfig.instance().cfg = None


class ArgumentsParsed(BaseException):
    """Raised once a command's parser accepted its arguments: the command stops there. A
    BaseException, so the commands' runner (console.py) does not report it as an error."""


def console_scripts() -> dict[str, str]:
    """dsvl-* name -> "module:function", from the installed package's entry points."""
    return {script.name: script.value for script in entry_points(group="console_scripts")
            if script.name.startswith("dsvl-")}


def invocation(line: str) -> tuple[str, list[str]] | None:
    """(module or console script, its arguments) when the line runs one of this package's commands."""
    try:
        tokens = shlex.split(line)
    except ValueError:  # prose with an apostrophe, not a command
        return None
    for index, token in enumerate(tokens):
        if token in ("-m", "--module") and index + 1 < len(tokens) and tokens[index + 1].startswith("dsvl_exp."):
            start, command = index + 2, tokens[index + 1]
        elif token.startswith("dsvl-") and (index == 0 or tokens[index - 1] in ("&&", ";", "$")):
            start, command = index + 1, token
        else:
            continue
        arguments = tokens[start:]
        for separator in ("&&", ";", "|"):
            arguments = arguments[:arguments.index(separator)] if separator in arguments else arguments
        return command, arguments
    return None


def documented_commands() -> list[str]:
    commands = []
    for line in command_lines():
        if line in NOT_COMMANDS or "dsvl" not in line:
            continue
        for placeholder, value in PLACEHOLDERS.items():
            line = line.replace(placeholder, value)
        if invocation(line) is not None:
            commands.append(line)
    return list(dict.fromkeys(commands))


def module_of(command: str) -> str:
    return console_scripts()[command].split(":")[0] if command.startswith("dsvl-") else command


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """Hydra's basic sweeper's expansion of `a=1,2 b=x,y` into one override list per job."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dsvl_exp.config.overrides import quote_numeric_group_choices

    parsed = OverridesParser.create().parse_overrides(quote_numeric_group_choices(overrides))
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, max_batch_size=None) for job in batch]


def compose_train_overrides(arguments: list[str], capsys, monkeypatch) -> list[str]:
    """Each job of the train command composed by its entry point with `--cfg job` (in this process:
    Hydra prints the config and returns without running the task): the failures, with the message."""
    from dsvl_exp.train import main

    multirun = bool({"-m", "--multirun"} & set(arguments))
    overrides = [argument for argument in arguments if argument not in ("-m", "--multirun")]
    failures = []
    for job in sweep_jobs(overrides) if multirun else [overrides]:
        monkeypatch.setattr(sys, "argv", ["dsvl-train", "--cfg", "job", *job])
        with pytest.raises(SystemExit) as ended:
            main()
        printed = capsys.readouterr()
        if ended.value.code != 0:
            failures.append(f"{' '.join(job)}: exit {ended.value.code}: {printed.err.strip()[-2000:]}")
        elif not printed.out.strip():
            failures.append(f"{' '.join(job)}: no config printed")
    return failures


def parse_only(module: str, arguments: list[str], monkeypatch) -> argparse.Namespace:
    """Run the command as `python -m` would, stopped right after its parser accepted the arguments."""
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, args=None, namespace=None):
        raise ArgumentsParsed(parse_args(parser, args, namespace))

    with monkeypatch.context() as patched, warnings.catch_warnings():
        patched.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        patched.setattr(sys, "argv", [module, *arguments])
        # runpy's note that the module was imported before (by an earlier case): it runs anew as __main__
        warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
        with pytest.raises(ArgumentsParsed) as parsed:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    return parsed.value.args[0]


def test_the_documents_show_every_command():
    modules = {module_of(invocation(command)[0]) for command in documented_commands()}
    assert modules >= {"dsvl_exp.train", "dsvl_exp.plan", "dsvl_exp.chat", "dsvl_exp.evaluate", "dsvl_exp.serve",
                       "dsvl_exp.export", "dsvl_exp.diff", "dsvl_exp.reproduce", "dsvl_exp.sweep_report"}
    assert all(command in (*command_lines(),) for command in NOT_COMMANDS)  # a note for a line no longer there


@pytest.mark.parametrize("command", documented_commands())
def test_documented_command_composes(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name, arguments = invocation(command)
    module = module_of(name)
    if module in TRAIN_MODULES:
        assert compose_train_overrides(arguments, capsys, monkeypatch) == []
    elif module in PLAN_MODULES:
        from dsvl_exp.plan import parse_arguments

        flags, overrides = parse_arguments(arguments)
        assert [value for value in overrides if value.startswith("-")] == []  # a flag plan does not know
        assert compose_train_overrides([*overrides, *(["-m"] if flags.multirun else [])], capsys, monkeypatch) == []
    else:
        parsed = parse_only(module, arguments, monkeypatch)
        assert isinstance(parsed, argparse.Namespace)


@pytest.mark.parametrize("script", sorted(console_scripts()))
def test_every_console_script_answers_help(script, capsys, monkeypatch):
    module_name, function = console_scripts()[script].split(":")
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    module = importlib.import_module(module_name)
    with pytest.raises(SystemExit) as ended:
        getattr(module, function)()
    assert ended.value.code in (0, None)
    summary, printed = module.__doc__.splitlines()[0], capsys.readouterr().out
    assert " ".join(summary.split()) in " ".join(printed.split())  # the command's one-line summary (argparse wraps it)


def test_a_renamed_flag_or_key_fails(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    """What the checks above catch: a flag the parser does not know, a key the schema does not have."""
    with pytest.raises(SystemExit) as ended:
        parse_only("dsvl_exp.chat", ["MODEL", "--max-tokens", "4"], monkeypatch)
    assert ended.value.code == 2
    failures = compose_train_overrides(["optim.lrr=1e-3"], capsys, monkeypatch)
    assert len(failures) == 1 and "optim.lrr" in failures[0] and "exit 2" in failures[0]


def test_links_between_the_documents_resolve():
    from helpers import REPO
    from test_readme_commands import DOCUMENTS

    broken = [f"{document}: {target}" for document in DOCUMENTS
              for target in re.findall(r"\]\(([^)#]+)[^)]*\)", (REPO / document).read_text())
              if not target.startswith(("http://", "https://")) and not (REPO / document).parent.joinpath(target).exists()]
    assert broken == []
