"""Run by test_export.py in 1 or 2 ranks: train the tiny default two steps through the recipe's
own builders, record the engine's logits, then export_from_engine and a checkpoint in the
layout `<run>/checkpoints/step-NNNNNNNN/` (+ config.yaml, `latest`).

    python engine_export_script.py ROOT [hydra overrides ...]
"""

import os
import sys
from functools import partial
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import get_scheduler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_model import batch_for  # noqa: E402

from dsvl_exp.config.schema import register_configs  # noqa: E402
from dsvl_exp.train import CONFIG_DIR  # noqa: E402
from dsvl_exp.training import distributed  # noqa: E402
from dsvl_exp.training.engine import build_engine, build_optimizer, deepspeed_config, model_construction, parameter_groups  # noqa: E402
from dsvl_exp.training.exporting import export_from_engine  # noqa: E402
from dsvl_exp.training.model_setup import build_model, configure_training  # noqa: E402

root = Path(sys.argv[1])
register_configs()
with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
    cfg = compose("config", overrides=sys.argv[2:])
distributed.init_process_group()
world, rank = distributed.world_size(), distributed.rank()
torch.manual_seed(0)
tokenizer = instantiate(cfg.tokenizer)
ds_config = deepspeed_config(zero=OmegaConf.to_container(cfg.zero, resolve=True), micro_batch_size=2, grad_accum=1,
                             world_size=world, precision="fp32", gradient_clipping=1.0)
with model_construction(ds_config) as hf_deepspeed_config:  # noqa: F841
    model = build_model(cfg, tokenizer)
configure_training(model, cfg)
groups = parameter_groups(model, 1e-2, None, 0.0)
optimizer = build_optimizer(partial(torch.optim.AdamW, betas=(0.9, 0.95), eps=1e-8), groups, lr=1e-2)
engine, _ = build_engine(model, optimizer, get_scheduler("constant", optimizer), ds_config)
batch = batch_for(tokenizer, model, ["red circle", "two"], [2, 1])
for _ in range(2):
    loss = engine(**batch).loss
    engine.backward(loss)
    engine.step()
engine.eval()
with torch.no_grad():
    out = engine(**batch)
if rank == 0:
    torch.save({"batch": batch, "loss": out.loss, "logits": out.logits}, root / "expected.pt")
keep = os.environ.get("KEEP_ADAPTERS") == "1"
export_from_engine(engine, tokenizer, root / "export", keep_adapters=keep, training_summary={"steps": 2})
tag = "step-00000002"
engine.save_checkpoint(str(root / "run" / "checkpoints"), tag=tag)
if rank == 0:
    OmegaConf.save(cfg, root / "run" / "checkpoints" / tag / "config.yaml", resolve=True)
    (root / "run" / "checkpoints" / "latest").write_text(tag)
