"""plan's parameter, fp32-master and optimizer-state bytes per rank equal, to the byte, what the
real engine holds (training/footprint.py's ranks/rank-<r>.json after a run through the entry
point), for ZeRO-2 and ZeRO-3 at 1 and 2 ranks. The model has odd sizes (DeepSpeed pads them),
a frozen vision tower and bf16 weights, so the partitioning rules are exercised, not just
"numel x 4"."""

from __future__ import annotations

import json

import pytest

from conftest import compose_config
from helpers import run_module
from dsvl_exp.planning.architecture import meta_model, run_vocabulary
from dsvl_exp.planning.model_states import model_states

ODD_TINY_RUN = ("experiment=smoke", "train.max_steps=1", "eval.every_n_steps=null", "eval.generation=false",
                "eval.monitor=eval/loss", "checkpoint.export=false", "train.vision=false", "train.precision=bf16",
                "decoder.hidden_size=40", "decoder.intermediate_size=101", "vision.hidden_size=45", "vision.num_heads=5",
                "vision.intermediate_size=72")


def planned(stage: int, ranks: int):
    cfg = compose_config(*ODD_TINY_RUN, f"zero={stage}")
    model = meta_model(cfg, run_vocabulary(cfg, None))
    return model_states(model, stage, ranks, "bf16", False, False)


def check_against_engine(tmp_path, ranks: int) -> None:
    """One multirun over zero=2,3 (one process start for both stages)."""
    sweep_dir = tmp_path / f"ranks{ranks}"
    run_module("dsvl_exp.train", "-m", "zero=2,3", f"hydra.sweep.dir={sweep_dir}", "train.progress_bar=false",
                        *ODD_TINY_RUN, f"launcher.nproc_per_node={ranks}", cwd=tmp_path)
    for job, stage in enumerate((2, 3)):
        plan = planned(stage, ranks)
        for rank in range(ranks):
            engine = json.loads((sweep_dir / str(job) / "ranks" / f"rank-{rank}.json").read_text())
            assert engine["zero_stage"] == stage and engine["world_size"] == ranks
            print(f"ZeRO-{stage} rank {rank}/{ranks}: engine {engine['parameter_bytes']} / {engine['master_bytes']} / "
                  f"{engine['state_bytes']} B, plan {plan.parameter_bytes} / {plan.master_bytes} / {plan.state_bytes} B")
            assert (plan.parameter_bytes, plan.master_bytes, plan.state_bytes) == (
                engine["parameter_bytes"], engine["master_bytes"], engine["state_bytes"])


@pytest.mark.slow
def test_one_rank_model_states_equal_the_engines(tmp_path):
    check_against_engine(tmp_path, 1)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_rank_model_states_equal_the_engines(tmp_path):
    check_against_engine(tmp_path, 2)
