"""The one-rank optimizer path (torch's fused AdamW under the DeepSpeed engine): the same losses
as the foreach AdamW it replaces, and engine checkpoints that resume exactly."""

import json
import sys
from pathlib import Path

import pytest

from helpers import run_cli, subprocess_env

REPO = Path(__file__).resolve().parent.parent

SCRIPT = r'''
import functools, json, sys, torch
from transformers import get_scheduler
from dsvl_exp.training import distributed
from dsvl_exp.training import engine as engine_module
torch.set_num_threads(1)
distributed.init_process_group()
out_dir = sys.argv[1]
ZERO = {"stage": 2, "overlap_comm": False, "contiguous_gradients": True, "reduce_bucket_size": 10**6,
        "allgather_bucket_size": 10**6, "offload_optimizer": {"device": "none"}, "offload_param": {"device": "none"}}

def model_and_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))
    return model, (torch.randn(8, 16, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 4)

def engine_for(model, fused):
    config = engine_module.deepspeed_config(ZERO, 8, 1, 1, "fp32", 1.0)
    groups = [{"params": list(model.parameters()), "weight_decay": 0.01}]
    return make_engine(model, groups, config, fused)

def make_engine(model, groups, config, fused=None):
    adamw = functools.partial(torch.optim.AdamW, betas=(0.9, 0.95), eps=1e-8)
    optimizer = engine_module.build_optimizer(adamw, groups, 1e-2, fused=fused)
    return engine_module.build_engine(model, optimizer, get_scheduler("constant", optimizer), config)[0]

def steps(engine, batch, n):
    losses = []
    for _ in range(n):
        loss = torch.nn.functional.cross_entropy(engine(batch[0]), batch[1])
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses

result = {}
for fused in (False, True):
    model, batch = model_and_batch()
    result[f"fused={fused}"] = steps(engine_for(model, fused), batch, 4)
model, batch = model_and_batch()
engine = engine_for(model, None)
result["default_fused"] = bool(engine.optimizer.optimizer.defaults.get("fused"))
steps(engine, batch, 2)
engine.save_checkpoint(out_dir, tag="two")
result["continued"] = steps(engine, batch, 2)
model, batch = model_and_batch()
engine = engine_for(model, None)
engine.load_checkpoint(out_dir, tag="two")
result["resumed"] = steps(engine, batch, 2)

# the single-rank default: ZeRO-2 configured, stage 0 run; the same losses, its own exact resume,
# weights readable by export; and an engine over a ZeRO-2 checkpoint keeps stage 2 to load it
from dsvl_exp.training.exporting import checkpoint_weights
from dsvl_exp.training.safe_loading import checkpoint_loading
from pathlib import Path

def stage0_engine(model, resumes_partitioned=None):
    config = engine_module.deepspeed_config({**ZERO, "single_rank": "stage0"}, 8, 1, 1, "fp32", 1.0,
                                            resumes_partitioned=resumes_partitioned)
    groups = [{"params": list(model.parameters()), "weight_decay": 0.01}]
    return make_engine(model, groups, config)

model, batch = model_and_batch()
engine = stage0_engine(model)
result["stage0_stage"] = engine.zero_optimization_stage()
result["stage0"] = steps(engine, batch, 2)
result["stage0_grad_norm"] = engine.get_global_grad_norm()
engine.save_checkpoint(out_dir, tag="stage0")
folder = Path(out_dir) / "stage0"
result["stage0_partitioned"] = engine_module.holds_zero_partitions(folder)
with checkpoint_loading(source=folder):
    weights = checkpoint_weights(folder)
result["stage0_export_exact"] = all(torch.equal(weights[k], v) for k, v in engine.module.state_dict().items())
result["stage0_continued"] = steps(engine, batch, 2)
model, batch = model_and_batch()
engine = stage0_engine(model, resumes_partitioned=False)
engine.load_checkpoint(out_dir, tag="stage0")
result["stage0_resumed"] = steps(engine, batch, 2)
model, batch = model_and_batch()
engine = stage0_engine(model, resumes_partitioned=engine_module.holds_zero_partitions(Path(out_dir) / "two"))
result["zero2_checkpoint_stage"] = engine.zero_optimization_stage()
engine.load_checkpoint(out_dir, tag="two")
result["zero2_checkpoint_resumed"] = steps(engine, batch, 2)
print("RESULT" + json.dumps(result))
'''


@pytest.fixture(scope="module")
def engine_results(tmp_path_factory) -> dict:
    tmp_path = tmp_path_factory.mktemp("engines")
    done = run_cli([sys.executable, "-c", SCRIPT, tmp_path], env=subprocess_env(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0"),
                   timeout=300)
    return json.loads(done.stdout.split("RESULT", 1)[1])


def test_fused_adamw_engine_matches_foreach_and_resumes(engine_results):
    result = engine_results
    assert result["default_fused"] is True  # torch has a fused CPU AdamW kernel
    assert result["fused=True"] == pytest.approx(result["fused=False"], rel=1e-5, abs=1e-6)
    assert result["fused=True"][-1] < result["fused=True"][0]
    assert result["resumed"] == result["continued"]  # bitwise: the optimizer state round-trips


def test_single_rank_stage0_default_matches_zero2_resumes_and_exports(engine_results):
    """zero.single_rank=stage0 (the default) runs one fp32 ZeRO-2 rank as stage 0: the ZeRO-2
    losses, the gradient norm still reported, its checkpoint resumes bitwise and exports; a ZeRO-2
    checkpoint (what a single-rank run wrote before this default) is resumed at stage 2."""
    result = engine_results
    assert result["stage0_stage"] == 0 and result["stage0_partitioned"] is False
    assert result["stage0"] == pytest.approx(result["fused=True"][:2], rel=1e-6)
    assert result["stage0_grad_norm"] is not None and result["stage0_grad_norm"] > 0
    assert result["stage0_export_exact"] is True
    assert result["stage0_resumed"] == result["stage0_continued"]
    assert result["zero2_checkpoint_stage"] == 2
    assert result["zero2_checkpoint_resumed"] == result["continued"]  # the ZeRO-2 run's own continuation, bitwise
