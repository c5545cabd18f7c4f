"""Train a DeepSpeed-VisualChat-style model.

    python -m dsvl_exp.train                                  # tiny default, synthetic data, CPU
    python -m dsvl_exp.train zero=3 optim.lr=5e-4 train.max_steps=500
    python -m dsvl_exp.train vision.pretrained=openai/clip-vit-large-patch14 \\
        decoder.pretrained=/models/Llama-2-7b-hf data=native data.train.0.path=train.jsonl ...
    python -m dsvl_exp.train -m zero=2,3                      # Hydra multirun

The config is composed once here; the run directory is Hydra's output directory. The task
returns the monitored eval metric (eval.monitor) so sweepers can optimise it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dsvl_exp.config.overrides import quote_numeric_group_choices
from dsvl_exp.config.schema import register_configs

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")

register_configs()


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float:
    from dsvl_exp.training.run import run_training  # heavy imports only once a run starts

    return run_training(cfg, Path(HydraConfig.get().runtime.output_dir))


def main() -> None:
    sys.argv = [sys.argv[0], *quote_numeric_group_choices(sys.argv[1:])]
    hydra_main()


if __name__ == "__main__":
    main()
