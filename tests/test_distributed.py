"""Two ranks on CPU (gloo), started every way a user starts them: one run directory each time,
the same training as one rank with the same global batch, ZeRO-3 really partitioned."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import read_metrics, run_cli, run_train, subprocess_env

COMMON = ("experiment=smoke", "eval.monitor=eval/loss", "train.max_steps=10", "train.progress_bar=false")
SHORT_RUN = (*COMMON, "eval.generation=false")
WITH_GENERATION = (*COMMON, "eval.generation=true", "eval.max_conversations=8")

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def launch(command: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """A launcher command in `cwd`, with Hydra choosing the run directory (not pinned)."""
    # without OMP_NUM_THREADS: the launch code decides it per rank
    result = run_cli(command, cwd=cwd, env=subprocess_env(drop=("OMP_NUM_THREADS",)), timeout=timeout)
    return result


def only_run_directory(root: Path) -> Path:
    """Exactly one run directory (holding the one metrics.jsonl and .hydra) under root."""
    metrics = sorted(root.rglob("metrics.jsonl"))
    hydra_dirs = sorted(root.rglob(".hydra"))
    assert len(metrics) == 1, metrics
    assert [d.parent for d in hydra_dirs] == [metrics[0].parent], hydra_dirs
    return metrics[0].parent


def rank_footprints(run_dir: Path) -> list[dict]:
    return [json.loads((run_dir / "ranks" / f"rank-{r}.json").read_text()) for r in range(2)]


def assert_close_losses(run_a: Path, run_b: Path, rel: float) -> None:
    metrics_a, metrics_b = read_metrics(run_a), read_metrics(run_b)
    for key in ("train/loss", "eval/loss"):
        a = [(m["step"], m[key]) for m in metrics_a if key in m]
        b = [(m["step"], m[key]) for m in metrics_b if key in m]
        assert [s for s, _ in a] == [s for s, _ in b] and a, (a, b)
        for (_, x), (_, y) in zip(a, b):
            assert math.isclose(x, y, rel_tol=rel), (key, a, b)


def test_two_local_ranks_one_run_directory_partitioned_like_one_rank(tmp_path):
    """`launcher.nproc_per_node=2 zero=3`: micro-batch 4 on each of 2 ranks sees, at every step,
    exactly the 8 samples one rank with micro-batch 8 sees (DistributedSampler deals one
    seeded permutation out in turn), so the losses agree up to how the mean is grouped."""
    zero3 = ("zero=3", "zero.stage3_param_persistence_threshold=0")  # no parameter kept whole
    one_rank = tmp_path / "one_rank"
    run_train(one_rank, *WITH_GENERATION, *zero3, "train.micro_batch_size=8")

    two = tmp_path / "two_ranks"
    two.mkdir()
    result = launch([sys.executable, "-m", "dsvl_exp.train", *WITH_GENERATION, *zero3, "train.micro_batch_size=4",
                     "launcher.nproc_per_node=2"], cwd=two)
    run_dir = only_run_directory(two)
    assert run_dir.parent.parent == two / "outputs" / "smoke"  # outputs/<experiment>/<date>/<time>
    assert_close_losses(one_rank, run_dir, rel=5e-3)

    # generation eval ran sharded over both ranks (ZeRO-3 gathers with synced_gpus)
    final = [m for m in read_metrics(run_dir) if "eval/loss" in m][-1]
    one_rank_final = [m for m in read_metrics(one_rank) if "eval/loss" in m][-1]
    # as one rank answers (none right after 10 steps: tests/golden/accuracy.json pins a non-zero run)
    assert final["eval/accuracy"] == one_rank_final["eval/accuracy"] == 0.0

    # rank 0's return value came back to the Hydra task
    final_eval = final["eval/loss"]
    returned = re.search(r"rank 0 returned eval/loss = (\S+)", result.stdout + result.stderr)
    assert returned and float(returned.group(1)) == pytest.approx(final_eval, rel=1e-12)
    # only rank 0 printed the config tree and the summary
    assert (result.stdout + result.stderr).count("run directory:") == 1

    # ZeRO-3: each rank stores half (DeepSpeed pads odd sizes) of every parameter
    footprints = rank_footprints(run_dir)
    assert [f["rank"] for f in footprints] == [0, 1] and {f["world_size"] for f in footprints} == {2}
    for name, share in footprints[0]["parameters"].items():
        assert share["local"] == math.ceil(share["numel"] / 2), name
        assert footprints[1]["parameters"][name] == share
    total = sum(s["numel"] for s in footprints[0]["parameters"].values())
    assert footprints[0]["parameter_bytes"] == pytest.approx(total * 4 / 2, rel=0.01)
    whole = rank_footprints_single(one_rank)
    assert whole["parameter_bytes"] == total * 4
    assert footprints[0]["state_bytes"] == pytest.approx(whole["state_bytes"] / 2, rel=0.01)


def rank_footprints_single(run_dir: Path) -> dict:
    return json.loads((run_dir / "ranks" / "rank-0.json").read_text())


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_torchrun_two_ranks_share_one_run_directory(tmp_path):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    launch([torchrun, "--nproc_per_node", "2", "-m", "dsvl_exp.train", *SHORT_RUN, "zero=2",
            "train.micro_batch_size=4"], cwd=tmp_path)
    run_dir = only_run_directory(tmp_path)
    footprints = rank_footprints(run_dir)
    assert [f["world_size"] for f in footprints] == [2, 2] and {f["zero_stage"] for f in footprints} == {2}
    # ZeRO-2: parameters whole on each rank, optimizer state split
    assert footprints[0]["parameter_bytes"] == footprints[1]["parameter_bytes"]
    assert footprints[0]["state_bytes"] == pytest.approx(footprints[0]["parameter_bytes"], rel=0.01)  # 2 moments / 2 ranks
    train = [m for m in read_metrics(run_dir) if "train/loss" in m]
    assert train[-1]["train/loss"] < train[0]["train/loss"]


@pytest.mark.skipif(shutil.which("deepspeed", path=str(Path(sys.executable).parent)) is None, reason="no deepspeed launcher")
def test_deepspeed_launcher_two_ranks_share_one_run_directory(tmp_path):
    """The deepspeed launcher appends --local_rank=N and leaves OMP_NUM_THREADS unset."""
    deepspeed = str(Path(sys.executable).parent / "deepspeed")
    from dsvl_exp.training.distributed import free_port

    launch([deepspeed, "--num_gpus", "2", "--master_port", str(free_port()), "--module", "dsvl_exp.train", *SHORT_RUN,
            "zero=3", "train.micro_batch_size=4"], cwd=tmp_path)
    run_dir = only_run_directory(tmp_path)
    assert [f["world_size"] for f in rank_footprints(run_dir)] == [2, 2]


PARTITIONED_LOAD = """
import dataclasses, json, sys
import deepspeed, torch
from safetensors.torch import load_file
from dsvl_exp.config.schema import ZeroConfig
from dsvl_exp.models.decoder import build_llama_decoder
from dsvl_exp.training import distributed
from dsvl_exp.training.engine import deepspeed_config, model_construction

folder, vocab_size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
distributed.init_process_group()
ds_config = deepspeed_config(zero=dataclasses.asdict(ZeroConfig(stage=3)), micro_batch_size=1, grad_accum=1,
                             world_size=distributed.world_size(), precision="fp32", gradient_clipping=1.0)
with model_construction(ds_config) as keep_alive:
    decoder = build_llama_decoder(vocab_size, pretrained=folder)
saved = load_file(f"{folder}/model.safetensors")
report = {}
for name, param in decoder.named_parameters():
    local = param.ds_tensor.numel()
    with deepspeed.zero.GatheredParameters([param]):
        full = param.detach().clone()
    expected = saved[name]
    rows = expected.shape[0]
    report[name] = {"numel": param.ds_numel, "local": local, "shape": list(full.shape),
                    "equal": bool(torch.equal(full[:rows], expected))}
# built from a config: HF's own initialisation (std = initializer_range), not torch's defaults
with model_construction(ds_config) as keep_alive:
    fresh = build_llama_decoder(vocab_size, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
for name, param in fresh.named_parameters():
    with deepspeed.zero.GatheredParameters([param]):
        report["fresh." + name] = {"numel": param.ds_numel, "local": param.ds_tensor.numel(),
                                   "std": param.detach().float().std().item(), "equal": True}
json.dump(report, open(f"{out}/rank-{distributed.rank()}.json", "w"))
"""


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_zero3_from_pretrained_loads_into_shards(tmp_path):
    """HfDeepSpeedConfig + zero.Init: from_pretrained fills 2 shards with the checkpoint's
    values, the embedding resize for the added tokens happens on the shards too, and a model
    built from a config gets transformers' initialisation, not torch's defaults (N(0, 1)
    embeddings), although its weights never exist whole."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    script = tmp_path / "load.py"
    script.write_text(PARTITIONED_LOAD)
    torchrun = str(Path(sys.executable).parent / "torchrun")
    launch([torchrun, "--nproc_per_node", "2", str(script), str(tmp_path / "llama"), "99", str(tmp_path)], cwd=tmp_path)
    reports = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    assert reports[0].keys() == reports[1].keys() and len(reports[0]) == 24
    for name, entry in reports[0].items():
        assert entry["equal"] and reports[1][name]["equal"], name
        assert entry["local"] == math.ceil(entry["numel"] / 2), name
    assert reports[0]["model.embed_tokens.weight"]["shape"] == [99, 32]  # resized for added tokens
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "lm_head.weight"):
        assert reports[0]["fresh." + name]["std"] == pytest.approx(0.02, rel=0.15), name

