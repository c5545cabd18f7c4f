"""`python -m dsvl_exp.plan` / `dsvl-plan`: the reference recipe's plan, the tiny default's
epoch time from its data, a config that does not fit and its alternatives, a sweep table, and
a user error."""

from __future__ import annotations

import json
import math
import sys

import pytest

from helpers import run_cli, run_module, subprocess_env
from dsvl_exp.models.flops import flop_counts, step_flops
from dsvl_exp.plan import run

REFERENCE = ["experiment=dsvl_7b_reference", "--gpu", "A100-40GB", "--gpus", "8", "--json"]
LLAMA_7B_WITH_CLIP_L = 303_179_776 + 4_206_592 + 131_084_288 + 6_607_355_904  # tests/test_full_size.py


def plan_json(capsys, arguments: list[str]) -> dict:
    run(arguments)
    return json.loads(capsys.readouterr().out)


def test_reference_recipe_fits_eight_a100_40gb(capsys):
    plan = plan_json(capsys, REFERENCE)
    memory = plan["memory"]
    assert plan["ranks"] == 8 and plan["zero_stage"] == 3 and plan["precision"] == "fp16"
    assert plan["grad_accum"] == 16  # global batch 128 = 8 ranks x micro-batch 1 x 16
    assert memory["total"] == sum(memory["lines"].values())
    # ZeRO-3 over 8 ranks: each holds an eighth (rounded up per parameter) of every fp16 weight
    states = memory["model_states"]
    assert LLAMA_7B_WITH_CLIP_L * 2 / 8 <= states["parameter_bytes"] < LLAMA_7B_WITH_CLIP_L * 2 / 8 + 2 * 1000
    trainable = 4_206_592 + 131_084_288  # the projection and the embeddings
    assert states["master_bytes"] == pytest.approx(trainable * 4 / 8, abs=4 * 100)
    assert memory["micro_batch_shape"] == {"rows": 1, "length": 4096, "images_per_row": 8,
                                           "supervised_per_row": (4096 - 8 * 257) // 2}
    assert memory["lines"]["activations: vision layers"] == 0  # frozen tower: run without grad
    assert plan["fits"] and plan["largest_micro_batch"] > 1 and plan["alternatives"] == []
    assert plan["time"]["steps_per_epoch"] is None and plan["notes"]  # no data: said so
    assert plan["time"]["model_flops_per_micro_step"] > 6 * 6.6e9 * 4096


def test_full_fine_tune_on_one_card_does_not_fit_and_names_cheaper_changes(capsys):
    plan = plan_json(capsys, ["experiment=dsvl_7b_reference", "train.decoder=true", "zero=2",
                              "train.gradient_checkpointing=false", "--gpu", "A100-80GB", "--gpus", "1", "--json"])
    assert not plan["fits"] and plan["memory"]["total"] > 80 * 1024**3
    alternatives = {a["override"]: a for a in plan["alternatives"]}
    assert set(alternatives) >= {"train.gradient_checkpointing=true", "zero=3", "zero=3_offload", "train.decoder=lora",
                                 "data.max_seq_len=2048"}
    assert alternatives["train.decoder=lora"]["fits"] and alternatives["zero=3_offload"]["fits"]
    assert alternatives["train.gradient_checkpointing=true"]["total_bytes"] < plan["memory"]["total"]
    assert alternatives["data.max_seq_len=2048"]["total_bytes"] < plan["memory"]["total"]
    # one rank: ZeRO-3 partitions nothing and adds its gathering buckets
    assert alternatives["zero=3"]["total_bytes"] > plan["memory"]["total"]
    # DeepSpeed's own estimate of the model states (all parameters trained, 16-bit): 2 + 18 bytes a parameter
    assert plan["memory"]["deepspeed_estimate_model_states"] == 20 * LLAMA_7B_WITH_CLIP_L


@pytest.mark.slow
def test_tiny_default_epoch_time_from_its_data(tmp_path):
    env = subprocess_env(DSVL_CACHE_DIR=str(tmp_path / "cache"))  # no length cache yet
    result = run_module("dsvl_exp.plan", "--json", cwd=tmp_path, env=env)
    plan = json.loads(result.stdout)
    time = plan["time"]
    assert time["train_samples"] == 2000 and time["steps_per_epoch"] == 2000 // 8  # micro-batch 8, 1 rank
    assert "no length cache yet" in time["data"]
    assert time["run_seconds"] == pytest.approx(500 * time["step_seconds"])  # train.max_steps=500
    assert plan["fits"] and plan["largest_micro_batch"] == 64


def test_flops_are_the_training_logs_formula(capsys):
    plan = plan_json(capsys, REFERENCE)
    from conftest import compose_config
    from dsvl_exp.planning.architecture import meta_model, run_vocabulary

    cfg = compose_config("experiment=dsvl_7b_reference", validate=False)
    counts = flop_counts(meta_model(cfg, run_vocabulary(cfg, 32000)))
    shape = plan["memory"]["micro_batch_shape"]
    expected = step_flops(counts, rows=1, length=4096, image_tokens=8 * 257, supervised_tokens=shape["supervised_per_row"])
    assert plan["time"]["model_flops_per_micro_step"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow
def test_sweep_prints_one_row_per_job(tmp_path):
    result = run_module("dsvl_exp.plan", "-m", "zero=2,3", "train.micro_batch_size=1,2,4,8", "experiment=dsvl_7b_reference",
                        "--gpus", "8", cwd=tmp_path)
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("zero=")]
    assert [row[:2] for row in rows] == [[f"zero={z}", f"train.micro_batch_size={m}"] for z in (2, 3) for m in (1, 2, 4, 8)]
    totals = [float(row[2]) for row in rows]
    assert totals[:4] == sorted(totals[:4]) and totals[4:] == sorted(totals[4:])  # more rows, more activations
    assert all(math.isfinite(float(row[6])) for row in rows)  # step seconds


def test_unknown_gpu_is_a_user_error(monkeypatch, capsys):
    from dsvl_exp import plan

    monkeypatch.setattr(sys, "argv", ["dsvl-plan", "--gpu", "A100-20GB"])
    with pytest.raises(SystemExit) as exit_info:
        plan.main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--gpu 'A100-20GB' is not one of A100-40GB, A100-80GB, H100-80GB, H200" in error and "Traceback" not in error


@pytest.mark.slow
def test_epoch_time_uses_the_length_cache_a_run_wrote(tmp_path):
    """After a run has cached its data's lengths, plan reads all of them instead of a sample."""
    from helpers import run_train

    env = subprocess_env(DSVL_CACHE_DIR=str(tmp_path / "cache"))
    plan_command = [sys.executable, "-m", "dsvl_exp.plan", "experiment=smoke", "--json"]
    before = run_cli(plan_command, cwd=tmp_path, env=env)
    assert "no length cache yet" in json.loads(before.stdout)["time"]["data"]

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_train(run_dir, "experiment=smoke", "train.max_steps=1", "eval.every_n_steps=null", "eval.generation=false",
              "eval.monitor=eval/loss", "checkpoint.export=false", env=env)
    after = run_cli(plan_command, cwd=tmp_path, env=env)
    time = json.loads(after.stdout)["time"]
    assert time["data"].startswith("length cache lengths-train-") and time["train_samples"] == 64  # synthetic_small
    assert time["steps_per_epoch"] == 64 // 8


def test_bad_override_is_a_user_error(monkeypatch, capsys):
    from dsvl_exp import plan

    monkeypatch.setattr(sys, "argv", ["dsvl-plan", "decoder.attention=bogus"])
    with pytest.raises(SystemExit) as exit_info:
        plan.main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "decoder.attention=bogus" in error and "Traceback" not in error
