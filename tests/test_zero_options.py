"""The `zero` group holds DeepSpeed's own `zero_optimization` keys: passed through to the engine,
any DeepSpeed key settable with `+`, every key checked at start-up by DeepSpeed's config model."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import compose_config
from dsvl_exp.errors import ConfigError
from dsvl_exp.training.engine import deepspeed_config
from test_train_e2e import entry_point


def zero_optimization(*overrides: str) -> dict:
    cfg = compose_config(*overrides)
    zero = OmegaConf.to_container(cfg.zero, resolve=True)
    return deepspeed_config(zero, 2, 1, 1, "fp32", 1.0, resumes_partitioned=True)["zero_optimization"]


def test_the_group_is_passed_through_in_deepspeeds_names():
    from deepspeed.runtime.config import DeepSpeedConfig

    two = zero_optimization("zero=2", "zero.overlap_comm=true", "+zero.sub_group_size=1e9")
    assert two == {"stage": 2, "overlap_comm": True, "contiguous_gradients": True, "reduce_bucket_size": 50_000_000,
                   "allgather_bucket_size": 50_000_000, "stage3_param_persistence_threshold": 10_000,
                   "stage3_max_live_parameters": 30_000_000, "stage3_prefetch_bucket_size": 5_000_000,
                   "sub_group_size": 1e9}  # no single_rank (the project's key), no device-none offload nodes
    offload = zero_optimization("zero=3_offload", "train.decoder=lora", "zero.offload_optimizer.pin_memory=false")
    assert offload["stage"] == 3
    assert offload["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert offload["offload_param"] == {"device": "cpu", "pin_memory": True}
    ds_config = deepspeed_config(OmegaConf.to_container(compose_config("+zero.sub_group_size=1e9").zero, resolve=True),
                                 2, 1, 1, "fp32", 1.0, resumes_partitioned=True)
    assert DeepSpeedConfig(ds_config).zero_config.sub_group_size == 10**9  # read by DeepSpeed's own parser


@pytest.mark.parametrize("override, message", [
    ("+zero.sub_grup_size=1", r"zero\.sub_grup_size=1: Extra inputs are not permitted \(did you mean zero\.sub_group_size\?\)"),
    ("+zero.offload_optimizer.pin_mem=false",
     r"zero\.offload_optimizer\.pin_mem=False: Extra inputs are not permitted \(did you mean zero\.offload_optimizer\.pin_memory\?\)"),
    ("+zero.sub_group_size=many", r"zero\.sub_group_size='many': Input should be a valid integer"),
])
def test_a_key_deepspeed_does_not_take_is_named(override, message):
    zero = OmegaConf.to_container(compose_config(override).zero, resolve=True)
    with pytest.raises(ConfigError, match=message):
        deepspeed_config(zero, 2, 1, 1, "fp32", 1.0)


def test_a_misspelt_deepspeed_key_stops_the_entry_point_with_exit_2(tmp_path):
    run_dir = tmp_path / "run"
    result = entry_point(tmp_path, "experiment=smoke", "+zero.reduce_bucket_sise=1000", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "zero.reduce_bucket_sise=1000: Extra inputs are not permitted (did you mean zero.reduce_bucket_size?)" \
        in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not run_dir.exists()  # refused before anything was written
