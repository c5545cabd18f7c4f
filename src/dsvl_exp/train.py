"""Train a DeepSpeed-VisualChat-style model.

    python -m dsvl_exp.train                                  # tiny default, synthetic data, CPU
    python -m dsvl_exp.train zero=3 optim.lr=5e-4 train.max_steps=500
    python -m dsvl_exp.train vision.pretrained=openai/clip-vit-large-patch14 \\
        decoder.pretrained=/models/Llama-2-7b-hf data=native data.train.0.path=train.jsonl ...
    python -m dsvl_exp.train -m zero=2,3                      # Hydra multirun
    python -m dsvl_exp.train launcher.nproc_per_node=2 zero=3 # 2 ranks started from here
    torchrun --nproc_per_node 2 -m dsvl_exp.train zero=3      # 2 ranks started by torchrun
    deepspeed --num_gpus 2 --module dsvl_exp.train zero=3     # or by the deepspeed launcher
    python -m dsvl_exp.train -m launcher=slurm launcher.nodes=2 launcher.nproc_per_node=8 ...

The config is composed once, in one process, and checked before anything is built; the run
directory is Hydra's output directory and all ranks share it (training/launch.py). The task
returns the monitored eval metric (eval.monitor) so sweepers can optimise it. A user error
(config, data, files) ends the run with its one-paragraph message and exit status 2; the
traceback only with HYDRA_FULL_ERROR=1 (dsvl_exp/console.py lists the exit statuses).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dsvl_exp.config.overrides import as_typed, quote_numeric_group_choices, resume_shorthand
from dsvl_exp.config.resolvers import register_resolvers
from dsvl_exp.config.schema import register_configs
from dsvl_exp.config.validation import validate_config
from dsvl_exp.console import EXIT_USER_ERROR, hydra_errors_raised, report_user_error, run_command
from dsvl_exp.errors import ConfigError, UserError
from dsvl_exp.repro import run_dirs
from dsvl_exp.repro.sweeps import register_sweep_resolvers
from dsvl_exp.training import rendezvous
from dsvl_exp.training.third_party_logs import quiet_library_loggers

# The configs ship inside the package, so a wheel, an editable install and a checkout all find them.
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")


register_configs()
register_resolvers()
register_sweep_resolvers()  # ${dsvl_direction:...} for the Optuna sweeper
quiet_library_loggers()


class TaskStarted:
    """Set once Hydra has composed the config: a Hydra / OmegaConf error before it is the user's."""
    value = False


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def train_task(cfg: DictConfig) -> float:
    """The Hydra task (one per multirun job): check the config, name the run, start the ranks."""
    from dsvl_exp.repro.jobs import run_recorded_job  # manifest.json; a failed job is recorded, the next starts clean

    from dsvl_exp.repro.jobs import is_rank_zero_task
    from dsvl_exp.training.run_lock import hold_run_dir

    TaskStarted.value = True
    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    single_run = hydra_config.mode == RunMode.RUN

    def locked_job() -> float:  # nothing is written to the run directory before the lock is held
        if single_run:  # a multirun job's refusal is recorded in its manifest instead (the sweep goes on)
            refuse_before_writing(cfg, run_dir)
        with hold_run_dir(run_dir, enabled=is_rank_zero_task()):
            run_dirs.save_hydra_files(HydraConfig.instance().cfg, cfg, run_dir)
            return run_recorded_job(cfg, run_dir,
                                    lambda: exit_on_user_error(lambda: validate_and_launch(cfg, validated=single_run)))

    return exit_on_user_error(locked_job)


def refuse_before_writing(cfg: DictConfig, run_dir: Path) -> None:
    """The start-up checks of a single run, before anything is written: a refused start leaves an
    existing run directory untouched and removes the empty one Hydra just created for it."""
    try:
        from dsvl_exp.training.resume import check_run_dir_use
        from dsvl_exp.training.run_lock import check_not_busy

        check_not_busy(run_dir)  # a live run's directory: say so, not that it "already holds a run"
        check_config(cfg)

        checkpoint_dir = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else run_dir / "checkpoints"
        check_run_dir_use(run_dir, checkpoint_dir, cfg.resume.checkpoint)
    except UserError:
        run_dirs.close_log_files_in(run_dir)
        run_dirs.remove_if_only_just_created(run_dir, stop_at=Path.cwd())
        raise


def check_config(cfg: DictConfig) -> None:
    """The config's own checks, then the zero group by DeepSpeed's config model (its keys are
    DeepSpeed's; config/ does not import DeepSpeed)."""
    validate_config(cfg)
    from dsvl_exp.training.zero_options import check_zero_options

    check_zero_options(OmegaConf.to_container(cfg.zero, resolve=True, enum_to_str=True))


def validate_and_launch(cfg: DictConfig, validated: bool = False) -> float:
    """Check the config (unless the single-run checks did), name the tracker runs, start the ranks."""
    if not validated:
        check_config(cfg)
    name_tracker_runs(cfg, HydraConfig.get())
    from dsvl_exp.training.launch import launch_ranks  # heavy imports only once a run starts

    return launch_ranks(cfg, Path(HydraConfig.get().runtime.output_dir))


def exit_on_user_error(call: Callable[[], float]) -> float:
    """A user error ends the job here, inside Hydra's task, as the runner would end it: Hydra would
    otherwise print its own lines around the message (and the job's manifest records it)."""
    try:
        return call()
    except UserError as error:
        report_user_error(error)
        raise SystemExit(EXIT_USER_ERROR) from None


def name_tracker_runs(cfg: DictConfig, hydra_config) -> None:
    """Fill the run name (all trackers) and the W&B group / tags the user left unset
    (training/logging.py says how)."""
    from dsvl_exp.training.logging import wandb_identity

    choices = hydra_config.runtime.choices
    identity = wandb_identity(
        experiment=choices.get("experiment"),
        overrides=as_typed(list(hydra_config.overrides.task)),  # W&B shows zero=3, not zero='3'
        choices=dict(choices),
        attention=str(cfg.decoder.attention),
        sweep_dir=hydra_config.sweep.dir if hydra_config.mode == RunMode.MULTIRUN else None,
    )
    wandb = cfg.logger.wandb
    # one run name for every tracker: logger.run_name, else a name given to W&B, else the identity
    cfg.logger.run_name = cfg.logger.run_name or (wandb.name if wandb is not None else None) or identity["name"]
    if wandb is None:
        return
    wandb.name = wandb.name or cfg.logger.run_name
    wandb.group = wandb.group or identity["group"]
    wandb.tags = [*identity["tags"], *(tag for tag in wandb.tags if tag not in identity["tags"])]


def run_hydra() -> None:
    """Hydra composes and runs the task; its errors are raised here (not printed by Hydra with exit
    status 1), so the console runner reports them like every other error."""
    try:
        with hydra_errors_raised():
            train_task()
    except (HydraException, OmegaConfBaseException, yaml.YAMLError) as error:  # a bad override or config file
        if TaskStarted.value:
            raise
        raise ConfigError(composition_message(error)) from error
    except OSError as error:  # Hydra creating the run directory (hydra.run.dir names a file, say)
        if TaskStarted.value:
            raise
        raise ConfigError(f"{error.filename}: {error.strerror}; Hydra could not prepare the run there. Check "
                          "hydra.run.dir (or hydra.sweep.dir): it must be a directory you can write") from error


def composition_message(error: BaseException) -> str:
    """Hydra's message and its cause (what Hydra itself prints), as one paragraph."""
    parts = [str(error)]
    if error.__cause__ is not None and str(error.__cause__) not in parts[0]:
        parts.append(str(error.__cause__))
    return " ".join(" ".join(line.strip() for line in part.splitlines() if line.strip()) for part in parts)


def train_command() -> int:
    arguments, local_rank = rendezvous.without_local_rank_argument(sys.argv[1:])
    if {"--help", "-h"} & set(arguments):
        from dsvl_exp.config.help import print_help  # Hydra's own --help takes seconds: it copies every group

        print_help(__doc__, CONFIG_DIR)
        return 0
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    sys.argv = [sys.argv[0], *resume_shorthand(quote_numeric_group_choices(arguments))]
    if not rendezvous.started_by_external_launcher(os.environ):
        run_hydra()
        return 0
    # Ranks started by torchrun / deepspeed: only rank 0 runs Hydra and shares each job.
    from dsvl_exp.training import job_relay

    if os.environ["RANK"] != "0":
        job_relay.run_jobs_from_rank_zero()
        return 0
    run_hydra()
    job_relay.announce_no_more_jobs()
    return 0


def main() -> None:
    run_command(train_command)


if __name__ == "__main__":
    main()
