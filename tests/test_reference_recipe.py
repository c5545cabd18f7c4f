"""experiment=dsvl_7b_reference reproduces run_7b.sh; it runs for a few steps on tiny models and fixture data."""

from unittest import mock

import pytest
import yaml

from dsvl_exp.training.engine import resolve_grad_accum
from conftest import compose_config
from helpers import read_metrics, run_train
from reference_fixtures import write_reference_root

REFERENCE_DATASETS = ["llava", "llava_dial", "otter_mimicit_cgd", "otter_mimicit_sd", "otter_mimicit_sn",
                      "otter_mimicit_tvc", "otter_mimicit_vst", "llava_otter_blend", "sparkles_dialogue"]
# tiny models instead of the hub names, the same architecture families
TINY_MODELS = [
    "vision.pretrained=null", "vision.image_size=32", "vision.patch_size=8", "vision.hidden_size=32",
    "vision.num_layers=1", "vision.num_heads=2", "vision.intermediate_size=64",
    "decoder.pretrained=null", "decoder.hidden_size=32", "decoder.num_layers=2", "decoder.num_heads=2",
    "decoder.num_kv_heads=2", "decoder.intermediate_size=64", "decoder.max_position_embeddings=4096",
]


def compose_reference(*overrides):
    # the recipe trains in fp16, which composition allows only on a machine with a GPU
    with mock.patch("torch.cuda.is_available", return_value=True):
        return compose_config("experiment=dsvl_7b_reference", *overrides)


def test_composes_to_the_run_7b_settings():
    cfg = compose_reference("data.data_path=/data/dsvl")
    assert cfg.vision.pretrained == "openai/clip-vit-large-patch14"
    assert cfg.decoder.pretrained == "meta-llama/Llama-2-7b-hf" and cfg.decoder.attention == "mmca"
    assert cfg.projection._target_.endswith("baseline_projection_after")
    assert cfg.zero.stage == 3 and cfg.train.gradient_checkpointing
    assert [d.format for d in cfg.data.train] == REFERENCE_DATASETS
    assert [d.concatenate for d in cfg.data.train] == [3, 2, 1, 1, 1, 1, 1, 1, 1]
    assert (cfg.optim.lr, cfg.train.epochs, cfg.optim.warmup_ratio, cfg.optim.scheduler.name) == (1e-3, 6, 0.1, "cosine")
    assert (cfg.data.max_seq_len, cfg.train.micro_batch_size, cfg.train.global_batch_size) == (4096, 1, 128)
    assert (cfg.train.precision, cfg.data.eval_split, cfg.seed) == ("fp16", 0.1, 1234)
    assert not cfg.train.vision and not cfg.train.decoder and cfg.train.embeddings and cfg.train.projection


def test_global_batch_decides_accumulation_per_world_size():
    assert resolve_grad_accum(128, 1, 8, grad_accum=1) == 16
    assert resolve_grad_accum(128, 2, 2, grad_accum=1) == 32
    assert resolve_grad_accum(None, 2, 2, grad_accum=3) == 3
    with pytest.raises(ValueError, match=r"global_batch_size=128 is not a multiple of train.micro_batch_size=3 x 2"):
        resolve_grad_accum(128, 3, 2, grad_accum=1)


@pytest.mark.slow
def test_runs_a_few_steps_on_tiny_models_and_fixture_data(tmp_path):
    root = write_reference_root(tmp_path / "data")
    run_dir = tmp_path / "run"
    run_train(
        run_dir, "experiment=dsvl_7b_reference", f"data.data_path={root}", *TINY_MODELS,
        "train.epochs=null", "train.max_steps=4", "train.global_batch_size=2", "train.precision=fp32",
        "train.vision=true", "train.decoder=true", "train.log_every_n_steps=1", "eval.max_batches=2",
    )
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["decoder"]["attention"] == "mmca" and saved["zero"]["stage"] == 3
    metrics = read_metrics(run_dir)
    stats = next(m for m in metrics if "data/train_samples" in m)
    assert (stats["data/train_samples"], stats["data/eval_samples"]) == (13, 1)  # 14 fixture samples, 10% held out
    losses = [m["train/loss"] for m in metrics if "train/loss" in m]
    assert losses == pytest.approx([6.225616, 6.219978, 6.145520, 6.136806], rel=1e-4)  # seeded, measured
    evals = [m for m in metrics if "eval/loss" in m]
    assert [m["step"] for m in evals] == [0, 4]  # before training, as the reference, and at the end
