"""The one-rank optimizer path (torch's fused AdamW under the DeepSpeed engine): the same losses
as the foreach AdamW it replaces, and engine checkpoints that resume exactly."""

import json
import sys
from pathlib import Path

import pytest

from helpers import run_cli, subprocess_env

REPO = Path(__file__).resolve().parent.parent

SCRIPT = r'''
import json, sys, torch
from dsvl_exp.training import distributed
from dsvl_exp.training import engine as engine_module
torch.set_num_threads(1)
distributed.init_process_group()
out_dir = sys.argv[1]
ZERO = {"stage": 2, "overlap_comm": False, "contiguous_gradients": True, "reduce_bucket_size": 10**6,
        "allgather_bucket_size": 10**6, "offload_optimizer": "none", "offload_param": "none"}

def model_and_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))
    return model, (torch.randn(8, 16, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 4)

def engine_for(model, fused):
    config = engine_module.deepspeed_config(ZERO, 8, 1, 1, "fp32", 1.0)
    groups = [{"params": list(model.parameters()), "weight_decay": 0.01}]
    return engine_module.build_engine(model, groups, 1e-2, [0.9, 0.95], 1e-8, "constant", 10, 0, config, fused=fused)[0]

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
print("RESULT" + json.dumps(result))
'''


def test_fused_adamw_engine_matches_foreach_and_resumes(tmp_path):
    done = run_cli([sys.executable, "-c", SCRIPT, tmp_path], env=subprocess_env(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0"),
                   timeout=300)
    result = json.loads(done.stdout.split("RESULT", 1)[1])
    assert result["default_fused"] is True  # torch has a fused CPU AdamW kernel
    assert result["fused=True"] == pytest.approx(result["fused=False"], rel=1e-5, abs=1e-6)
    assert result["fused=True"][-1] < result["fused=True"][0]
    assert result["resumed"] == result["continued"]  # bitwise: the optimizer state round-trips
