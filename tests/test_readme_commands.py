"""The documents are a test: every shell command in README.md, the pages under docs/ and
experiments/README.md that starts with `python -m dsvl_exp.`, `dsvl-` or `make` runs as written,
in reading order, in a temporary copy of the checkout (a fresh git repository, so a run's own
outputs must not make it dirty), and must exit 0.

Commands that use what an earlier one made (a run directory, a sweep) run together, in reading
order, in one case (GROUPS below); every other command is a case of its own, in its own copy of
the checkout, so the cases can run in parallel (pytest-xdist).

Everything this test changes about a command is in the one block below: settings appended to
commands that would train for long, placeholders (`MODEL`, `<date>/<time>`) filled with what the
earlier commands made, inputs a command reads prepared beforehand, and the commands that need
something outside this machine (7B folders, SLURM, a network), skipped with the reason.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, run_cli, start_cli, subprocess_env

# Reading order: a group's commands run in this order (the README's tour first).
GUIDE_PAGES = ("running", "configuration", "data", "checkpoints", "distributed", "sweeps", "using-a-model", "export",
               "planning", "performance", "index")
DOCUMENTS = ("README.md", *(f"docs/guide/{page}.md" for page in GUIDE_PAGES), "docs/design.md", "experiments/README.md")
COMMAND_START = re.compile(r"^(python -m dsvl_exp\.|dsvl-|make\b)")

# ---- the one place where the test departs from the README ---------------------------------------
# A few optimizer steps, a checkpoint on the way (resume and export examples need one), one eval batch.
SHORT_RUN = ("train.max_steps=4", "train.log_every_n_steps=2", "checkpoint.every_n_steps=2",
             "eval.every_n_steps=null", "eval.max_batches=1", "eval.max_conversations=4")
APPENDED = [  # (commands matching, settings appended at the end: the last value of a key wins)
    (r"^(python -m dsvl_exp\.train|dsvl-train)\b", SHORT_RUN),
    (r"hparams_search=optuna|experiment=lr_search", ("hydra.sweeper.n_trials=2",)),
    (r"^make demo$", ("DEMO_ARGS=" + " ".join(SHORT_RUN),)),
]
GROUPS = [  # (commands matching, case): commands that read what an earlier one of the same case wrote
    (r"runs/my_run|\bMODEL\b|tasks/", "a trained run (runs/my_run): chat, evaluate, serve, export, reproduce"),
    (r"runs/long|runs/other", "resume"),
    (r"lr_search", "the lr_search sweep and its review"),
    (r"projection_attention_ablation", "the projection_attention_ablation sweep and its report"),
    (r"outputs/default/<|RUN_A|^python -m dsvl_exp\.train( zero=3)?$", "two default runs and their diff"),
]
SKIPPED = {  # command (as written) -> why it cannot run here
    "make test-quick": "the quick subset of the suite, which holds the checks of this file",
    "make test": "the whole suite, which runs this test",
    "dsvl-export": "names the console script; `python -m dsvl_exp.export` runs below",
    "dsvl-train zero=<TAB>": "keys typed at a shell with completion installed, not a command",
    "python -m dsvl_exp.train logger.wandb.mode=online": "W&B online needs the network and an account",
    "python -m dsvl_exp.train launcher.nproc_per_node=8 zero=3_offload": "8 ranks: a machine with 8 devices",
    "python -m dsvl_exp.train vision.pretrained=openai/clip-vit-large-patch14 decoder.pretrained=/models/Llama-2-7b-hf "
    "data=native data.train.0.path=/data/train.jsonl data.eval.0.path=/data/eval.jsonl":
        "hub weights and a 7B folder, and the user's data",
    "python -m dsvl_exp.train -m launcher=slurm launcher.nodes=2 launcher.nproc_per_node=8 launcher.gpus_per_node=8 "
    "hydra.launcher.partition=gpu hydra.launcher.account=myproj zero=3": "SLURM (tests/test_launch.py drives the plugin)",
    "python -m dsvl_exp.train experiment=dsvl_7b_reference data.data_path=/data/dsvl launcher.nproc_per_node=8":
        "the reference datasets and 7B weights on 8 devices (tests/test_reference_recipe.py runs it tiny)",
    "python -m dsvl_exp.train data=reference data.data_path=/data/dsvl": "the reference datasets under /data/dsvl",
    # prose in experiments/README.md naming a command, not one to run
    "python -m dsvl_exp.train experiment=<name>": "a pattern: experiment=smoke and the experiments run above",
    "python -m dsvl_exp.sweep_report <sweep dir>": "a pattern: the sweep_report commands run above",
    "python -m dsvl_exp.reproduce": "names the command: the reproduce commands run above",
    "python -m dsvl_exp.reproduce <sweep dir>/5": "re-runs a 150-step job of the ablation: reproduce runs above",
    "dsvl-*": "a pattern naming every console script",
    "make test-fresh-venv": "builds a virtual environment from the package registry (minutes); its own target",
    "make test-lmms-eval": "builds an environment with lmms-eval from the package registry (minutes); its own target",
    "python -m dsvl_exp.export old_export --out my_model": "needs a folder exported by an older release "
                                                          "(tests/test_hf_model.py converts one)",
    "python -m dsvl_exp.export OLD_FOLDER --out NEW_FOLDER": "the same conversion, as a pattern",
    "python -m dsvl_exp.export --from-dsvl /ckpt/epoch-5/pytorch_model.bin --vision /models/clip-vit-large-patch14 "
    "--decoder /models/Llama-2-7b-hf --tokenizer /models/Llama-2-7b-hf --projection baseline --attention mmca_legacy "
    "--image-order reversed_legacy --out /models/dsvl-7b": "a reference checkpoint and its 7B folders "
                                                           "(tests/test_reference_import.py imports a tiny one)",
}
# Commands that do not end by themselves: what they read on stdin, or the line that shows they
# are up (then they are stopped).
# diff exits 1 when the runs differ in meaning (documented): the README's examples compare different runs.
EXIT_STATUSES = {r"^python -m dsvl_exp\.diff\b": (0, 1)}
STDIN = {r"^python -m dsvl_exp\.chat (MODEL|runs/my_run)$": "/quit\n"}
READY_LINE = {r"^python -m dsvl_exp\.serve\b": "serving", r"^dsvl-api\b": "serving"}
COMMAND_TIMEOUT_S = 600


def prepare_inputs(cwd: Path) -> None:
    """Files the README's commands name as the user's: chat rounds and a reference-layout eval file."""
    from PIL import Image

    for name, colour in (("red_circle.png", "red"), ("blue_square.png", "blue")):
        Image.new("RGB", (32, 32), colour).save(cwd / name)
    (cwd / "rounds.jsonl").write_text(
        '{"images": ["red_circle.png"], "question": "What colour is the shape in image 1?"}\n'
        '{"images": ["blue_square.png"], "question": "What colour is the shape in image 2?"}\n{"clear": true}\n')
    (cwd / "eval_comprehensive.json").write_text(
        '{"colours": [["What colour is the shape in image 1?", "red_circle.png", "red"], ["Say hello."]]}')


def fill_placeholders(command: str, cwd: Path) -> str:
    """The README's placeholders, filled with what the commands before made."""
    def newest(pattern: str, index: int = -1) -> str:
        found = sorted((p for p in cwd.glob(pattern) if p.is_dir()), key=lambda p: p.stat().st_mtime)
        assert found, f"{command}: nothing matches {pattern} (an earlier command should have made it)"
        return str(found[index].relative_to(cwd))

    command = command.replace(" [--out DIR]", "")
    command = re.sub(r"outputs/default/<date>/<t(\d)>", lambda m: newest("outputs/default/*/*", int(m[1]) - 1), command)
    command = re.sub(r"(multirun|outputs)/(\w+)/<date>/<time>", lambda m: newest(f"{m[1]}/{m[2]}/*/*"), command)
    if "RUN_A RUN_B" in command:
        command = command.replace("RUN_A RUN_B", f"{newest('outputs/default/*/*', 0)} {newest('outputs/default/*/*', 1)}")
    command = re.sub(r"([\w./-]+/checkpoints)/step-\d{8}", lambda m: newest(f"{m[1]}/step-*", 0), command)
    for port in ("7860", "8000"):  # the README's ports may be taken here
        command = command.replace(f"--port {port}", f"--port {free_port()}")
    return command.replace("MODEL", "runs/my_run")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
# -------------------------------------------------------------------------------------------------


def command_lines() -> list[str]:
    """Every line of the documents' shell blocks and inline code, in reading order, comments dropped."""
    lines = []
    for document in DOCUMENTS:
        text = (REPO / document).read_text()
        for language, block in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
            if language in ("bash", "sh", "shell", ""):
                lines += re.sub(r"\\\n\s*", " ", block).splitlines()
        lines += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return [" ".join(shlex.split(line, comments=True)) if "#" in line else " ".join(line.split()) for line in lines]


def readme_commands() -> list[str]:
    """Every command line in the documents' shell blocks and inline code, in order, each once (a
    command written with `MODEL` is the one written with the run it stands for, runs/my_run)."""
    first_of: dict[str, str] = {}
    for line in command_lines():
        if COMMAND_START.match(line):
            first_of.setdefault(re.sub(r"\bMODEL\b", "runs/my_run", line), line)
    return list(first_of.values())


def appended(command: str) -> list[str]:
    return [setting for pattern, settings in APPENDED if re.search(pattern, command) for setting in settings]


def make_checkout_copy(destination: Path) -> Path:
    """The tracked and new (not ignored) files of this checkout, committed in a fresh repository."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    for relative in listed:
        if (REPO / relative).is_file():
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / relative, destination / relative)
    git = ["git", "-C", str(destination), "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run(["git", "init", "-q", str(destination)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], check=True)
    return destination


def as_argv(command: str) -> list[str]:
    argv = shlex.split(command)
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    if argv[0].startswith("dsvl-"):  # the console script installed beside this interpreter
        return [str(Path(sys.executable).parent / argv[0]), *argv[1:]]
    if argv[0] == "make":  # the venv exists already: no set-up step, this interpreter
        return ["make", "-s", "-o", ".venv/.installed", *argv[1:], f"PY={sys.executable}"]
    return argv


def run_command(command: str, cwd: Path, env: dict) -> tuple[int, str, float]:
    argv, started = as_argv(command), time.monotonic()
    stdin = next((text for pattern, text in STDIN.items() if re.search(pattern, command)), "")
    ready = next((line for pattern, line in READY_LINE.items() if re.search(pattern, command)), None)
    if ready is None:
        result = run_cli(argv, cwd=cwd, env=env, input=stdin, timeout=COMMAND_TIMEOUT_S, check=False)
        return result.returncode, result.stdout[-3000:] + result.stderr[-5000:], time.monotonic() - started
    process = start_cli(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    for line in process.stdout:
        output.append(line)
        if ready in line:
            process.terminate()
            process.wait(timeout=30)
            return 0, "".join(output), time.monotonic() - started
    return process.wait(), "".join(output)[-8000:], time.monotonic() - started


def command_cases() -> list[tuple[str, list[str]]]:
    """The commands that run, as cases: each GROUPS entry's commands together (reading order), every
    other command alone."""
    cases: dict[str, list[str]] = {}
    for command in readme_commands():
        if command not in SKIPPED:
            group = next((name for pattern, name in GROUPS if re.search(pattern, command)), command)
            cases.setdefault(group, []).append(command)
    return list(cases.items())


def test_the_table_names_only_commands_the_documents_have():
    commands = readme_commands()
    assert len(commands) > 30 and "python -m dsvl_exp.train" in commands and "make demo" in commands
    assert sorted(set(SKIPPED) - set(commands)) == []  # a skip reason for a command no longer there
    grouped = dict(command_cases())
    assert [name for _, name in GROUPS if len(grouped.get(name, [])) < 2] == []  # a group with no use left
    print("\n".join(f"skipped: {command}  ({SKIPPED[command]})" for command in commands if command in SKIPPED))


def test_every_document_is_read():
    pages = {str(path.relative_to(REPO)) for path in (REPO / "docs").rglob("*.md")}
    assert sorted(pages - set(DOCUMENTS)) == []  # a new page: add it to GUIDE_PAGES in reading order


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("commands", [commands for _, commands in command_cases()],
                         ids=[re.sub(r"[^\w.=-]+", "_", name)[:60] for name, _ in command_cases()])
def test_every_documented_command_runs_as_written(commands, tmp_path):
    checkout = make_checkout_copy(tmp_path / "checkout")
    prepare_inputs(checkout)
    env = subprocess_env(PYTHONPATH=str(checkout / "src"), DSVL_CACHE_DIR=str(tmp_path / "cache"))
    failures, timings = [], []
    for command in commands:
        try:
            filled = " ".join([fill_placeholders(command, checkout), *map(shlex.quote, appended(command))])
        except AssertionError as missing:  # what it needs was not made: an earlier command failed
            failures.append(str(missing))
            continue
        status, output, seconds = run_command(filled, checkout, env)
        timings.append((seconds, filled))
        if status not in next((ok for pattern, ok in EXIT_STATUSES.items() if re.search(pattern, command)), (0,)):
            failures.append(f"$ {filled}\n(exit {status})\n{output}")
    print("\n".join(f"{seconds:6.1f} s  {command}" for seconds, command in timings))
    assert not failures, "\n\n".join(failures)
