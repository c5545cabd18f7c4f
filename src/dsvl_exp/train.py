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

The config is composed once, in one process; the run directory is Hydra's output directory and
all ranks share it (training/launch.py). The task returns the monitored eval metric
(eval.monitor) so sweepers can optimise it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dsvl_exp.config.overrides import quote_numeric_group_choices, resume_shorthand
from dsvl_exp.config.schema import register_configs
from dsvl_exp.training import rendezvous

# The configs ship inside the package, so a wheel, an editable install and a checkout all find them.
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")

register_configs()


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float:
    from dsvl_exp.training.launch import run  # heavy imports only once a run starts

    return run(cfg, Path(HydraConfig.get().runtime.output_dir))


def main() -> None:
    arguments, local_rank = rendezvous.without_local_rank_argument(sys.argv[1:])
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    sys.argv = [sys.argv[0], *resume_shorthand(quote_numeric_group_choices(arguments))]
    if not rendezvous.started_by_external_launcher(os.environ):
        hydra_main()
        return
    # Ranks started by torchrun / deepspeed: share the cores before torch starts its thread
    # pools (the deepspeed launcher leaves OMP_NUM_THREADS unset); only rank 0 runs Hydra.
    ranks_here = rendezvous.local_world_size(os.environ)
    os.environ.setdefault("OMP_NUM_THREADS", str(rendezvous.omp_threads_per_rank(rendezvous.cpu_count(), ranks_here)))
    from dsvl_exp.training import followers

    if os.environ["RANK"] != "0":
        followers.follow_rank_zero()
        return
    hydra_main()
    followers.release_followers()


if __name__ == "__main__":
    main()
