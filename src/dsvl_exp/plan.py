"""Plan a training run before it starts: memory per rank against a card, what would fit, time.

    python -m dsvl_exp.plan experiment=dsvl_7b_reference --gpu A100-40GB --gpus 8
    python -m dsvl_exp.plan zero=3 train.micro_batch_size=4 --gpu 25769803776 --json
    python -m dsvl_exp.plan -m zero=2,3 train.micro_batch_size=1,2,4,8     # a table, one row per job
    dsvl-plan experiment=dsvl_7b_reference vision=qwen ... --gpu H100-80GB

Takes the same overrides as `dsvl_exp.train`, composes and checks the config the same way,
and reads no weights: the model is built on the meta device (planning/).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from dsvl_exp.console import run_command
from dsvl_exp.errors import ConfigError, UserError


def parse_arguments(argv: list[str]):
    from dsvl_exp.planning.hardware import DEFAULT_GPU, GPUS
    from dsvl_exp.planning.timing import DEFAULT_MFU

    parser = argparse.ArgumentParser(prog="dsvl-plan", description=__doc__.splitlines()[0],
                                     epilog="Anything else is a config override, as for dsvl_exp.train.")
    parser.add_argument("--gpu", default=DEFAULT_GPU, help=f"{' | '.join(GPUS)} | a memory size in bytes (default {DEFAULT_GPU})")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs per node (default launcher.nproc_per_node)")
    parser.add_argument("--nodes", type=int, default=None, help="nodes (default launcher.nodes)")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, help=f"assumed model FLOPs utilisation (default {DEFAULT_MFU})")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("-m", "--multirun", action="store_true", help="plan every job of the sweep overrides; print a table")
    return parser.parse_known_args(argv)


def compose_run_config(overrides: list[str]):
    """The config `dsvl_exp.train` would run with for these overrides, checked as it checks it,
    except that the data need not exist yet (without it the plan says what it cannot time)."""
    from hydra import compose, initialize_config_dir

    from dsvl_exp.config.overrides import quote_numeric_group_choices, resume_shorthand
    from dsvl_exp.config import validation
    from dsvl_exp.train import CONFIG_DIR  # importing it registers the schemas and resolvers

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=resume_shorthand(quote_numeric_group_choices(overrides)))
    # not check_precision_fits_the_machine: a plan is for the cards it names, not this machine
    for check in (validation.check_known_keys, validation.check_resolves, validation.check_parts_fit,
                  validation.check_training_settings, validation.check_value_ranges, validation.check_local_folders):
        check(cfg)
    return cfg


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """Hydra's basic sweeper's expansion of `a=1,2 b=x,y` into one override list per job."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dsvl_exp.config.overrides import quote_numeric_group_choices

    parsed = OverridesParser.create().parse_overrides(quote_numeric_group_choices(overrides))
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(job) for batch in batches for job in batch]


def plan_one(overrides: list[str], args) -> dict:
    from dsvl_exp.planning.hardware import parse_gpu
    from dsvl_exp.planning.plan import make_plan

    cfg = compose_run_config(overrides)
    gpus = args.gpus if args.gpus is not None else int(cfg.launcher.nproc_per_node)
    nodes = args.nodes if args.nodes is not None else int(cfg.launcher.nodes)
    if gpus < 1 or nodes < 1:
        raise UserError(f"--gpus {gpus} --nodes {nodes}: both must be at least 1")
    return make_plan(cfg, parse_gpu(args.gpu), gpus, nodes, args.mfu)


def run(argv: list[str]) -> None:
    from contextlib import redirect_stdout

    from dsvl_exp.planning.report import plan_text, sweep_table, to_json

    args, overrides = parse_arguments(argv)
    # stdout carries the plan alone (--json is read by scripts); libraries' chatter goes to stderr
    with redirect_stdout(sys.stderr):
        jobs = sweep_jobs(overrides) if args.multirun else [overrides]
        rows = [(job, plan_one(job, args)) for job in jobs]
    if not args.multirun:
        print(to_json(rows[0][1]) if args.json else plan_text(rows[0][1]))
    elif args.json:
        print(to_json([{"overrides": job, **plan} for job, plan in rows]))
    else:
        print(sweep_table(rows))


def plan_command() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a plan never downloads
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from hydra.errors import HydraException

    try:
        run(sys.argv[1:])
    except HydraException as error:  # a bad override fails composition, as for train
        from dsvl_exp.train import composition_message

        raise ConfigError(composition_message(error)) from error
    return 0


def main() -> None:
    """The console script: the exit statuses of dsvl_exp/console.py (user errors 2, one message)."""
    run_command(plan_command)


if __name__ == "__main__":
    main()
