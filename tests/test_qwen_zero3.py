"""The Qwen tower built partitioned under ZeRO-3 (zero.Init) still loads its weights strictly."""

import socket
import sys

import pytest
import torch
from safetensors.torch import save_file

from dsvl_exp.models.qwen_vit import build_qwen_vision_tower
from helpers import run_cli

TINY = dict(image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_size=48, output_dim=64, num_queries=16)

SCRIPT = """
import os, sys, torch, deepspeed
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[3])
# the product's initialisation: deepspeed.init_distributed alone JIT-builds the CPU shm_comm op
# (about 30 s on a fresh machine, 144 s on a loaded one), which training never uses
from dsvl_exp.training import distributed
distributed.init_process_group()
from dsvl_exp.models.qwen_vit import build_qwen_vision_tower
config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
with deepspeed.zero.Init(config_dict_or_path=config):
    tower = build_qwen_vision_tower(pretrained=sys.argv[1], **TINY)
weight = tower.model.transformer.resblocks[0].mlp.c_fc.weight
assert hasattr(weight, "ds_id") and weight.numel() == 0, "not partitioned"
with deepspeed.zero.GatheredParameters(list(tower.parameters())):
    out = tower.model.eval()(torch.load(sys.argv[2])["images"])
torch.save(out, sys.argv[2] + ".out")
"""


@pytest.mark.multiprocess
def test_partitioned_tower_loads_strictly(tmp_path):
    torch.manual_seed(3)
    reference = build_qwen_vision_tower(**TINY).model.eval()
    save_file(reference.state_dict(), str(tmp_path / "model.safetensors"))
    images = torch.randn(2, 3, 32, 32)
    torch.save({"images": images}, tmp_path / "io.pt")
    script = f"TINY = {TINY!r}\n" + SCRIPT
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    run_cli([sys.executable, "-c", script, tmp_path, tmp_path / "io.pt", port], timeout=300)
    with torch.no_grad():
        assert torch.allclose(torch.load(tmp_path / "io.pt.out"), reference(images), atol=1e-6)
