"""export_from_engine (ZeRO-2 with LoRA, ZeRO-3 over 2 ranks) and `python -m dsvl_exp.export`
from a checkpoint: DSVLModel.from_pretrained gives the trained engine's logits."""

import sys

import pytest
import torch

from dsvl_exp.export import export_checkpoint
from dsvl_exp.export import main as export_main
from dsvl_exp.models.dsvl import DSVLModel
from helpers import REPO, run_cli, subprocess_env

SCRIPT = REPO / "tests" / "engine_export_script.py"
LORA = ("train.decoder=lora", "train.vision=lora", "lora.decoder.r=2", "lora.vision.r=2")


def run(command, keep_adapters=False, timeout=300):
    return run_cli(command, env=subprocess_env(KEEP_ADAPTERS="1" if keep_adapters else "0"), timeout=timeout)


def logits_of(folder, expected):
    model = DSVLModel.from_pretrained(folder)
    with torch.no_grad():
        out = model(**expected["batch"])
    return out.loss, out.logits


@pytest.fixture(scope="module")
def zero2_lora(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero2_lora")
    run([sys.executable, str(SCRIPT), str(root), *LORA])
    return root


@pytest.mark.slow
def test_zero2_lora_export_and_checkpoint_export(zero2_lora, tmp_path):
    expected = torch.load(zero2_lora / "expected.pt", weights_only=True)
    loss, logits = logits_of(zero2_lora / "export", expected)  # merged by default
    assert torch.allclose(logits, expected["logits"], atol=1e-5) and torch.allclose(loss, expected["loss"], atol=1e-6)
    assert not list((zero2_lora / "export").glob("adapters"))
    assert '"steps": 2' in (zero2_lora / "export" / "README.md").read_text()

    # offline, one process, from the checkpoint layout; the run dir means checkpoints/latest
    result = run([sys.executable, "-m", "dsvl_exp.export", str(zero2_lora / "run"), "--out", str(tmp_path / "kept"),
                  "--keep-adapters"])
    assert "exported to" in result.stdout
    assert sorted(p.name for p in (tmp_path / "kept" / "adapters").iterdir()) == ["decoder", "vision"]
    loss, logits = logits_of(tmp_path / "kept", expected)
    assert torch.equal(logits, expected["logits"]) and torch.equal(loss, expected["loss"])
    assert "step-00000002" in (tmp_path / "kept" / "README.md").read_text()


def test_export_of_a_non_checkpoint_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("seed: 0\n")  # a run directory's config is not a checkpoint
    assert export_main([str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "neither a run directory with checkpoints/latest nor a checkpoint folder" in error
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_zero3_two_ranks_export_gathers_everything(tmp_path):
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(SCRIPT), str(tmp_path), "zero='3'", "zero.stage3_param_persistence_threshold=0"])
    expected = torch.load(tmp_path / "expected.pt", weights_only=True)
    loss, logits = logits_of(tmp_path / "export", expected)
    assert torch.allclose(logits, expected["logits"], atol=1e-6) and torch.allclose(loss, expected["loss"], atol=1e-6)
    # the ZeRO-3 checkpoint consolidates to the same weights
    export_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000002", tmp_path / "from_checkpoint")
    assert torch.equal(logits_of(tmp_path / "from_checkpoint", expected)[1], logits)
