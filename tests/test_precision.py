"""Mixed precision: bf16 trains the tiny default close to the fp32 golden losses; fp16 is refused
at composition on a machine without a GPU and, on a GPU, goes through DeepSpeed's dynamic loss
scaler (the config it gets is read back through DeepSpeed's own parser)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import compose_config
from dsvl_exp.config.validation import check_precision_fits_the_machine
from dsvl_exp.errors import ConfigError
from dsvl_exp.training.engine import deepspeed_config
from test_train_e2e import GOLDEN, entry_point

ZERO = {"stage": 2, "overlap_comm": False, "contiguous_gradients": True, "reduce_bucket_size": 500_000_000,
        "allgather_bucket_size": 500_000_000, "offload_optimizer": {"device": "none"}, "offload_param": {"device": "none"}}
# bf16 keeps 8 bits of mantissa: over 20 smoke steps the logged losses stayed within 1e-3 of the
# fp32 golden run's (measured: largest difference 8e-4 at step 5 and 10); 5e-3 leaves headroom.
BF16_TOLERANCE = 5e-3


def test_fp16_is_refused_without_a_gpu_in_one_line():
    cfg = compose_config("train.precision=fp16", validate=False)
    with pytest.raises(ConfigError, match=r"^train\.precision=fp16 needs a GPU and this machine has none; use "
                                          r"train\.precision=bf16 \(or fp32\) here$"):
        check_precision_fits_the_machine(cfg, cuda_available=False)
    check_precision_fits_the_machine(cfg, cuda_available=True)  # a GPU machine trains it
    check_precision_fits_the_machine(compose_config("train.precision=bf16", validate=False), cuda_available=False)


@pytest.mark.slow
def test_fp16_on_this_cpu_machine_stops_at_composition_through_the_entry_point(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: fp16 is allowed")
    result = entry_point(tmp_path, "experiment=smoke", "train.precision=fp16", timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "train.precision=fp16 needs a GPU" in result.stderr
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("parameters.json"))


def test_fp16_goes_through_deepspeeds_dynamic_loss_scaler():
    from deepspeed.runtime.config import DeepSpeedConfig

    config = deepspeed_config(ZERO, micro_batch_size=2, grad_accum=4, world_size=1, precision="fp16", gradient_clipping=1.0)
    assert config["fp16"]["enabled"] and not config["bf16"]["enabled"]
    parsed = DeepSpeedConfig(config).float16_config
    assert parsed.enabled and parsed.loss_scale == 0  # 0: dynamic
    assert parsed.dynamic_loss_scale_args() == {"init_scale": 2**16, "scale_window": 100, "delayed_shift": 2,
                                                "consecutive_hysteresis": False, "min_scale": 1}
    bf16 = DeepSpeedConfig(deepspeed_config(ZERO, 2, 4, 1, "bf16", 1.0))
    assert bf16.bfloat16_config.enabled and not bf16.float16_config.enabled


@pytest.mark.slow
def test_bf16_smoke_run_stays_close_to_the_fp32_golden_losses(tmp_path):
    result = entry_point(tmp_path, *GOLDEN["overrides"], "train.precision=bf16", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads(line) for line in Path(tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for key in ("train/loss", "eval/loss"):
        got = [[r["step"], r[key]] for r in records if key in r]
        expected = GOLDEN["values"][key]
        assert [step for step, _ in got] == [step for step, _ in expected]
        for (step, value), (_, golden) in zip(got, expected):
            assert math.isfinite(value) and abs(value - golden) < BF16_TOLERANCE, (key, step, value, golden)
    assert "bf16 matmuls" in result.stderr + result.stdout  # the MFU peak is bf16's
