"""A mixed run of three formats (native synthetic, LLaVA JSON, a reference dataset) through the entry point."""

import json

import pytest

from helpers import read_metrics, run_train
from reference_fixtures import write_image, write_json, write_reference_root


@pytest.mark.slow
def test_three_formats_train_through_the_entry_point(tmp_path):
    root = write_reference_root(tmp_path / "ref")
    for k, colour in enumerate([(255, 0, 0), (0, 0, 255)] * 4):
        write_image(tmp_path / f"llava/img{k}.png", colour)
    llava = write_json(tmp_path / "llava/d.json", [
        {"id": f"l{k}", "image": f"img{k}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the shape in image 1?"},
            {"from": "gpt", "value": "red" if k % 2 == 0 else "blue"}]} for k in range(8)])
    run_dir = tmp_path / "run"
    run_train(
        run_dir, "experiment=smoke", "train.max_steps=20", "eval.generation=false", "eval.monitor=eval/loss",
        f"data.train=[{{format: llava_json, path: '{llava}', weight: 2.0}}, {{format: aokvqa, path: '{root}', concatenate: 2}}]",
        "data.eval_split=0.1", "data.group_by_length=true", "data.debug_dump=3",
    )
    metrics = read_metrics(run_dir)
    stats = next(m for m in metrics if "data/train_samples" in m)
    # 64 synthetic + 16 llava (weight 2) + 1 or 2 aokvqa samples (2 records, concatenation up to 2); 10 % held out
    total = stats["data/train_samples"] + stats["data/eval_samples"] - 16  # minus the synthetic eval file
    assert 81 <= total <= 82 and stats["data/eval_samples"] == 16 + round(total * 0.1)
    assert stats["data/truncated"] == stats["data/dropped_too_long"] == stats["data/skipped_missing_image"] == 0
    losses = [m["train/loss"] for m in metrics if "train/loss" in m]
    assert len(losses) == 4 and losses[-1] < losses[0]
    fingerprint = json.loads((run_dir / "data_fingerprint.json").read_text())  # synthetic train + eval, llava, aokvqa
    assert len(fingerprint["annotation_files"]) == 4 and len(fingerprint["sha256"]) == 64
    assert len(list((run_dir / "debug_samples").glob("sample*.txt"))) == 3
