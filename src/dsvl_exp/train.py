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
(config, data, files) ends the run with its one-paragraph message and exit status 1; the
traceback only with HYDRA_FULL_ERROR=1.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from dsvl_exp.config.overrides import as_typed, quote_numeric_group_choices, resume_shorthand
from dsvl_exp.config.resolvers import register_resolvers
from dsvl_exp.config.schema import register_configs
from dsvl_exp.config.validation import validate_config
from dsvl_exp.errors import UserError
from dsvl_exp.repro import run_dirs
from dsvl_exp.repro.sweeps import register_sweep_resolvers
from dsvl_exp.training import rendezvous
from dsvl_exp.training.library_logs import quiet_library_loggers

# The configs ship inside the package, so a wheel, an editable install and a checkout all find them.
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")
USER_ERROR_EXIT_STATUS = 1

log = logging.getLogger("dsvl_exp.train")

register_configs()
register_resolvers()
register_sweep_resolvers()  # ${dsvl_direction:...} for the Optuna sweeper
quiet_library_loggers()


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def train_task(cfg: DictConfig) -> float:
    """The Hydra task (one per multirun job): check the config, name the run, start the ranks."""
    from dsvl_exp.repro.jobs import run_job  # manifest.json; a failed job is recorded, the next starts clean

    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    single_run = hydra_config.mode == RunMode.RUN
    if single_run:  # a multirun job's refusal is recorded in its manifest instead (the sweep goes on)
        refuse_before_writing(cfg, run_dir)
    run_dirs.save_hydra_files(HydraConfig.instance().cfg, cfg, run_dir)
    return run_job(cfg, run_dir, lambda: checked_task(cfg, validated=single_run))


def refuse_before_writing(cfg: DictConfig, run_dir: Path) -> None:
    """The start-up checks of a single run, before anything is written: a refused start leaves an
    existing run directory untouched and removes the empty one Hydra just created for it."""
    try:
        validate_config(cfg)
        from dsvl_exp.training.resume import check_run_dir_use

        checkpoint_dir = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else run_dir / "checkpoints"
        check_run_dir_use(run_dir, checkpoint_dir, cfg.resume.checkpoint)
    except UserError as error:
        run_dirs.close_log_files_in(run_dir)
        run_dirs.remove_if_only_just_created(run_dir, stop_at=Path.cwd())
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {error}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT_STATUS) from None


def checked_task(cfg: DictConfig, validated: bool = False) -> float:
    try:
        if not validated:
            validate_config(cfg)
        name_wandb_run(cfg, HydraConfig.get())
        from dsvl_exp.training.launch import launch_ranks  # heavy imports only once a run starts

        return launch_ranks(cfg, Path(HydraConfig.get().runtime.output_dir))
    except UserError as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        report_user_error(error)
        raise SystemExit(USER_ERROR_EXIT_STATUS) from None


def name_wandb_run(cfg: DictConfig, hydra_config) -> None:
    """Fill the W&B name / group / tags the user left unset (training/logging.py says how)."""
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
    wandb.name = wandb.name or identity["name"]
    wandb.group = wandb.group or identity["group"]
    wandb.tags = [*identity["tags"], *(tag for tag in wandb.tags if tag not in identity["tags"])]


def report_user_error(error: UserError) -> None:
    """The message alone on stderr, and in the run's train.log when one is open."""
    print(f"Error: {error}", file=sys.stderr)
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (error,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def main() -> None:
    arguments, local_rank = rendezvous.without_local_rank_argument(sys.argv[1:])
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    sys.argv = [sys.argv[0], *resume_shorthand(quote_numeric_group_choices(arguments))]
    if not rendezvous.started_by_external_launcher(os.environ):
        train_task()
        return
    # Ranks started by torchrun / deepspeed: only rank 0 runs Hydra and shares each job.
    from dsvl_exp.training import followers

    if os.environ["RANK"] != "0":
        followers.follow_rank_zero()
        return
    train_task()
    followers.release_followers()


if __name__ == "__main__":
    main()
