"""zero.single_rank through the real entry point: the default runs one fp32 ZeRO-2 rank as stage 0
(tests/test_train_e2e.py's golden losses are that run), and a checkpoint a single-rank ZeRO-2 run
wrote before that default (its config has no zero.single_rank) resumes under the new default
at stage 2, continuing with exactly the losses of the run that wrote it."""

from __future__ import annotations

import json

import pytest
import yaml

from dsvl_exp.training import checkpoint as checkpoints
from helpers import REPO, read_metrics, run_train

SMOKE = ("experiment=smoke", "eval.generation=false", "eval.monitor=eval/loss", "checkpoint.every_n_steps=10")


def losses(run_dir) -> dict[int, float]:
    return {record["step"]: record["train/loss"] for record in read_metrics(run_dir) if "train/loss" in record}


def zero_stage(run_dir) -> int:
    return json.loads((run_dir / "manifest.json").read_text())["derived"]["zero_stage"]


@pytest.mark.slow
def test_a_zero2_checkpoint_of_the_old_default_resumes_at_stage_2(tmp_path):
    old = tmp_path / "old"
    run_train(old, *SMOKE, "zero.single_rank=as_configured")
    assert zero_stage(old) == 2
    checkpoint = old / "checkpoints" / "step-00000010"
    assert sorted(p.name for p in checkpoint.glob("*.pt")) == [
        "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"]
    # what the code before zero.single_rank wrote: the same files, a config without the key
    config = yaml.safe_load((checkpoint / "config.yaml").read_text())
    del config["zero"]["single_rank"]
    (checkpoint / "config.yaml").write_text(yaml.safe_dump(config))
    (checkpoint / checkpoints.COMPLETE_MARKER).unlink()
    checkpoints.write_complete_marker(checkpoint, 10)  # the sizes as that code recorded them

    resumed = tmp_path / "resumed"
    run_train(resumed, *SMOKE, f"resume={checkpoint}")
    assert zero_stage(resumed) == 2  # the checkpoint's layout, not the stage-0 default
    before, after = losses(old), losses(resumed)
    assert sorted(after) == [15, 20] and {step: before[step] for step in after} == after
    # ZeRO-2 gives the golden losses, which the default (stage 0) run of tests/test_train_e2e.py gives too
    golden = json.loads((REPO / "tests" / "golden" / "smoke.json").read_text())["values"]["train/loss"]
    assert [before[step] for step, _ in golden] == pytest.approx([value for _, value in golden], rel=1e-4)
