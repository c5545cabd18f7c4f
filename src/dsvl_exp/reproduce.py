"""Re-run a run from its manifest and compare the result with the original.

    python -m dsvl_exp.reproduce RUN_DIR                     # into RUN_DIR-repro (or -repro2, ...);
                                                             # a sweep's job: <sweep>-repro/<job>
    python -m dsvl_exp.reproduce RUN_DIR --out runs/again --format markdown

The same overrides (hence the same resolved config, seeds and world size) go through the real
entry point, `python -m dsvl_exp.train`, from the original working directory, with the original's
thread count and W&B mode. Before it starts, a warning lists what differs from the manifest in code
(commit, uncommitted diff) and packages. Afterwards it prints `python -m dsvl_exp.diff` of the
two runs and exits like it: 0 identical in meaning, 1 differs, 2 error. On CPU in fp32 with the
same world size the metrics come out bit-identical.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
from pathlib import Path

from dsvl_exp.config.legacy_keys import upgrade_overrides
from dsvl_exp.console import EXIT_DIFFERS, EXIT_OK, run_command
from dsvl_exp.repro import environment
from dsvl_exp.repro.compare import DIFFERS, RunError, compare_runs, load_run
from dsvl_exp.repro.render import print_rich, to_json, to_markdown

# Environment variables that change a run's numbers or its outputs; restored from the manifest.
REPLAYED_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "WANDB_MODE", "DSVL_CACHE_DIR", "PYTHONHASHSEED",
                "CUBLAS_WORKSPACE_CONFIG", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dsvl_exp.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="the new run directory (default: RUN_DIR-repro)")
    parser.add_argument("--format", choices=("rich", "markdown", "json"), default="rich")
    return parser.parse_args(argv)


def default_out(run_dir: Path) -> Path:
    """RUN_DIR-repro (-repro2, ...); for a sweep's job, <sweep>-repro/<job>: beside the sweep, not
    inside it, where it would count as one more job of the sweep."""
    run_dir = Path(run_dir).resolve()
    in_sweep = (run_dir.parent / "multirun.yaml").is_file()
    base = run_dir.parent if in_sweep else run_dir
    for number in itertools.count(1):
        candidate = base.with_name(f"{base.name}-repro{number if number > 1 else ''}")
        candidate = candidate / run_dir.name if in_sweep else candidate
        if not candidate.exists():
            return candidate
    raise AssertionError("unreachable")


def drift_warnings(manifest: dict, run_dir: Path) -> list[str]:
    """What differs between the manifest and the code and packages this command would run."""
    warnings = []
    recorded, current = (manifest.get("code") or {}).get("git"), environment.code_version().get("git")
    if isinstance(recorded, dict) and isinstance(current, dict):
        if recorded.get("commit") != current.get("commit"):
            warnings.append(f"code: commit {current.get('commit', '')[:12]} now, {recorded.get('commit', '')[:12]} then")
        if (recorded.get("diff_sha256"), recorded.get("untracked_sha256")) != (
                current.get("diff_sha256"), current.get("untracked_sha256")):
            saved_diff = run_dir / environment.DIFF_FILE
            where = f"its diff is in {saved_diff}" if saved_diff.is_file() else "it had no diff of tracked files"
            if recorded.get("untracked") != current.get("untracked"):
                where += f"; untracked files then: {recorded.get('untracked') or 'none'}, now: {current.get('untracked') or 'none'}"
            warnings.append(f"code: the uncommitted changes differ from the run's ({where})")
    elif recorded != current:
        warnings.append(f"code: {recorded!r} then, {current!r} now")
    then = environment.read_freeze(run_dir / environment.FREEZE_FILE)
    now = {line.split("==")[0].lower(): line.split("==", 1)[1] for line in environment.pip_freeze()}
    changed = sorted(name for name in set(then) | set(now) if then.get(name) != now.get(name)) if then else []
    if changed:
        listing = ", ".join(f"{name} {then.get(name, '-')} -> {now.get(name, '-')}" for name in changed[:12])
        warnings.append(f"packages: {len(changed)} differ: {listing}{' ...' if len(changed) > 12 else ''}")
    return warnings


def train_command(manifest: dict, out: Path) -> list[str]:
    overrides = upgrade_overrides(list((manifest.get("hydra") or {}).get("overrides") or []))  # an old run's names
    return [sys.executable, "-m", "dsvl_exp.train", *overrides, f"hydra.run.dir={out.resolve()}"]


def replay_env(manifest: dict) -> dict[str, str]:
    env = dict(os.environ)
    recorded = (manifest.get("environment") or {}).get("env") or {}
    for name in REPLAYED_ENV:
        if name in recorded:
            env[name] = recorded[name]
        else:
            env.pop(name, None)
    return env


def world_size_note(manifest: dict) -> str | None:
    derived, config = manifest.get("derived") or {}, manifest.get("config") or {}
    launcher = config.get("launcher") or {}
    planned = int(launcher.get("nproc_per_node", 1)) * int(launcher.get("nodes", 1))
    world = derived.get("world_size")
    if world is not None and world != planned:
        return (f"the run had {world} rank(s) from an external launcher (torchrun / deepspeed); this re-run "
                f"starts {planned}: rerun it under the same launcher for the same world size")
    return None


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    original = load_run(arguments.run_dir)
    manifest = original.manifest
    if not (manifest.get("hydra") or {}).get("overrides") and manifest.get("hydra") is None:
        raise RunError(f"{arguments.run_dir}: the manifest has no Hydra section to re-run from")
    for warning in drift_warnings(manifest, arguments.run_dir):
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    if (note := world_size_note(manifest)) is not None:
        print(f"warning: {note}", file=sys.stderr, flush=True)
    out = arguments.out or default_out(arguments.run_dir)
    command = train_command(manifest, out)
    recorded_cwd = manifest.get("cwd")
    cwd = recorded_cwd if recorded_cwd and Path(recorded_cwd).is_dir() else os.getcwd()
    print("reproducing: " + " ".join(command[1:]), file=sys.stderr, flush=True)
    # the run's own console output goes to stderr: stdout carries only the comparison
    result = subprocess.run(command, cwd=cwd, env=replay_env(manifest), stdout=sys.stderr)
    if result.returncode != 0:
        raise RunError(f"the re-run exited with status {result.returncode}; its log is in {out}")
    comparison = compare_runs(original, load_run(out))
    if arguments.format == "markdown":
        sys.stdout.write(to_markdown([comparison]))
    elif arguments.format == "json":
        sys.stdout.write(to_json([comparison]))
    else:
        print_rich([comparison])
    return EXIT_DIFFERS if comparison.verdict == DIFFERS else EXIT_OK


def console_main() -> None:
    run_command(main)


if __name__ == "__main__":
    console_main()
