"""Checkpoint and resume pieces without a training run: the resumable data stream, the loop's
non-finite handling, config comparison, metrics truncation, pruning, and an interrupted save."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from dsvl_exp.config.overrides import resume_shorthand
from dsvl_exp.config.choices import NonFiniteAction
from dsvl_exp.metric_direction import direction_for
from dsvl_exp.training import checkpoint as checkpoints
from dsvl_exp.training.interrupt import StopRequest
from dsvl_exp.training.loop import (BatchStream, LoopSettings, LoopState, NonFiniteLossError, ResumableSampler,
                                   TrainingLoop)
from dsvl_exp.training.resume import config_differences, refuse_used_run_dir, truncate_metrics
from helpers import run_cli


def test_resume_shorthand_keeps_the_public_spelling():
    assert resume_shorthand(["resume=auto", "resume=/r/checkpoints/step-00000006", "resume=null", "resume.allow_config_change=true",
                             "train.max_steps=5"]) == [
        "resume.checkpoint=auto", "resume.checkpoint=/r/checkpoints/step-00000006", "resume.checkpoint=null",
        "resume.allow_config_change=true", "train.max_steps=5"]


def test_config_differences_ignore_length_logging_and_checkpoint_keys():
    saved = {"optim": {"lr": 0.001, "betas": [0.9, 0.95]}, "train": {"max_steps": 10, "progress_bar": True},
             "logger": {"wandb": {"mode": "offline"}}, "checkpoint": {"every_n_steps": 5}, "seed": 0}
    current = {"optim": {"lr": 0.001, "betas": [0.9, 0.99]}, "train": {"max_steps": 20, "progress_bar": False},
               "logger": {"wandb": {"mode": "online"}}, "checkpoint": {"every_n_steps": 2}, "seed": 0, "extra": 1}
    assert config_differences(saved, current) == ["extra", "optim.betas"]


def test_a_moved_cache_directory_is_volatile_for_diff_and_allowed_on_resume():
    from dsvl_exp.repro.compare import dict_differences
    from dsvl_exp.config.meaning import volatile

    saved = {"data": {"cache_dir": "/a/data", "synthetic": {"root": "/a/synthetic", "num_train": 8}}, "seed": 0}
    moved = {"data": {"cache_dir": "/b/data", "synthetic": {"root": "/b/synthetic", "num_train": 8}}, "seed": 0}
    assert config_differences(saved, moved) == []
    assert [(d.key, d.kind) for d in dict_differences("config", saved, moved, volatile)] == [
        ("data.cache_dir", "volatile"), ("data.synthetic.root", "volatile")]
    more_data = {"data": {"cache_dir": "/b/data", "synthetic": {"root": "/b/synthetic", "num_train": 9}}, "seed": 0}
    assert config_differences(saved, more_data) == ["data.synthetic.num_train"]
    assert [(d.key, d.kind) for d in dict_differences("config", saved, more_data, volatile)] == [
        ("data.cache_dir", "volatile"), ("data.synthetic.num_train", "meaningful"), ("data.synthetic.root", "volatile")]


def test_resume_and_diff_compare_numbers_by_value():
    assert config_differences({"optim": {"lr": 1e-3, "warmup_steps": 1}}, {"optim": {"lr": 0.001, "warmup_steps": 1.0}}) == []
    assert config_differences({"train": {"gradient_clipping": 1}}, {"train": {"gradient_clipping": True}}) == [
        "train.gradient_clipping"]


def test_a_key_added_after_the_checkpoint_changes_nothing_at_its_default():
    saved = {"data": {"max_seq_len": 64}, "seed": 0}
    at_default = {"data": {"max_seq_len": 64, "on_bad_record": "error"}, "manifest": {"include_diff": True}, "seed": 0}
    assert config_differences(saved, at_default) == []
    changed = {"data": {"max_seq_len": 64, "on_bad_record": "skip"}, "manifest": {"include_diff": True}, "seed": 0}
    assert config_differences(saved, changed) == ["data.on_bad_record"]


def test_truncate_metrics_drops_later_and_cut_records(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": s}) + "\n" for s in (0, 1, 2, 3, 4)) + '{"step": 5, "lo')
    assert truncate_metrics(path, 2) == 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2]


def test_fresh_run_refuses_used_directory_but_not_hydra_files(tmp_path):
    (tmp_path / ".hydra").mkdir()
    refuse_used_run_dir(tmp_path, tmp_path / "checkpoints")  # Hydra's own files are no run
    (tmp_path / "checkpoints").mkdir()
    refuse_used_run_dir(tmp_path, tmp_path / "checkpoints")  # empty checkpoint dir neither
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="already holds a run.*resume=auto.*hydra.run.dir"):
        refuse_used_run_dir(tmp_path, tmp_path / "checkpoints")


def test_prune_keeps_the_newest_latest_and_best(tmp_path):
    for step in (3, 6, 9, 12, 15):
        (tmp_path / checkpoints.tag_for(step)).mkdir()
        (tmp_path / checkpoints.tag_for(step) / checkpoints.TRAINER_STATE).write_text("{}")
        checkpoints.write_complete_marker(tmp_path / checkpoints.tag_for(step), step)
    checkpoints.write_atomically(tmp_path / "latest", "step-00000015", fsync=True)
    checkpoints.publish_best(tmp_path, "step-00000003")
    assert checkpoints.prune(tmp_path, keep_last=2) == ["step-00000006", "step-00000009"]
    assert checkpoints.step_tags(tmp_path) == ["step-00000003", "step-00000012", "step-00000015"]
    assert checkpoints.best_tag(tmp_path) == "step-00000003" and checkpoints.read_latest(tmp_path) == "step-00000015"


def test_rng_state_round_trips_through_json():
    import random

    import numpy as np

    state = json.loads(json.dumps(checkpoints.rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoints.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_monitor_direction_from_the_metric_name():
    # one decision for the loop's `best`, the sweep report and the Optuna sweeper (dsvl_exp.metric_direction)
    from dsvl_exp.repro.metrics import direction_for as report_direction_for

    assert report_direction_for is direction_for
    assert [direction_for(m) for m in ("eval/loss", "train/loss", "eval/accuracy", "eval/contains_accuracy")] == \
        ["minimize", "minimize", "maximize", "maximize"]
    state = LoopState(best_value=0.5)
    assert [state.is_better(v, "minimize") for v in (0.4, 0.5, 0.6, math.nan, None)] == [True, False, False, False, False]
    assert [state.is_better(v, "maximize") for v in (0.4, 0.6)] == [False, True]


def test_loop_state_of_a_checkpoint_saved_before_the_renames():
    saved = {"step": 3, "epoch": 1, "position": 2, "window": {"loss": 1.5}, "skipped_nonfinite": 0}
    state = LoopState.from_dict(saved)
    assert (state.step, state.epoch, state.batches_into_epoch, state.unlogged_window) == (3, 1, 2, {"loss": 1.5})


def loader_over(n: int, batch_size: int, seed: int = 0) -> DataLoader:
    data = list(range(n))
    sampler = ResumableSampler(DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=seed, drop_last=True), batch_size)
    return DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=True)


def test_batch_stream_resumed_mid_epoch_continues_the_same_order():
    class EpochDataset(list):
        epochs: list = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    whole = BatchStream(loader_over(10, 3))
    reference = [whole.next_batch().tolist() for _ in range(8)]  # 3 batches per epoch (drop_last)
    first = BatchStream(loader_over(10, 3))
    taken = [first.next_batch().tolist() for _ in range(4)]
    assert (first.epoch, first.batches_into_epoch, first.epochs_done()) == (1, 1, 1)
    resumed = BatchStream(loader_over(10, 3), epoch=first.epoch, batches_into_epoch=first.batches_into_epoch)
    assert taken + [resumed.next_batch().tolist() for _ in range(4)] == reference
    dataset = EpochDataset(range(10))
    stream = BatchStream(DataLoader(dataset, batch_size=5, sampler=ResumableSampler(range(10), 5)), epoch=2)
    stream.next_batch(), stream.next_batch(), stream.next_batch()
    assert dataset.epochs == [2, 3]  # the dataset's own per-epoch draw follows the stream


class FakeEngine:
    """Loss = the batch's first value; NaN for the ids listed. Records what it trained on."""

    def __init__(self, nan_values):
        self.nan_values, self.trained, self.training = set(nan_values), [], True

    def train(self):
        pass

    def __call__(self, input_ids, **_):
        value = float(input_ids[0, 0])
        loss = torch.tensor(math.nan if value in self.nan_values else value)
        self.current = value
        return type("Output", (), {"loss": loss})()

    def backward(self, loss):
        self.trained.append(self.current)

    def step(self):
        pass

    def get_global_grad_norm(self):
        return 1.0


class FakeLogger:
    def __init__(self):
        self.records = []

    def log(self, metrics, step):
        self.records.append({"step": step, **metrics})


def collate(rows):
    ids = torch.tensor(rows).view(-1, 1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "image_num": [0] * len(rows),
            "sample_ids": [f"s{r}" for r in rows]}


def run_fake_loop(engine, on_nonfinite, max_steps=4, every_n_epochs=None, saves=None):
    data = list(range(8))
    loader = DataLoader(data, batch_size=1, sampler=ResumableSampler(list(range(8)), 1), collate_fn=collate)
    logger, evals = FakeLogger(), []
    scheduler = type("Schedule", (), {"get_last_lr": lambda self: [0.1]})()
    settings = LoopSettings(max_steps=max_steps, grad_accum=2, tokens_per_image=1, log_every_n_steps=1,
                            eval_every_n_steps=None, eval_every_n_epochs=every_n_epochs, checkpoint_every_n_steps=None,
                            monitor="eval/loss", on_nonfinite=on_nonfinite)
    TrainingLoop(engine, scheduler, BatchStream(loader), LoopState(), logger,
                 lambda step: evals.append(step) or {"eval/loss": 1.0},
                 lambda step, best: (saves if saves is not None else []).append((step, best)), StopRequest(),
                 settings).run()
    return logger.records, evals


def test_nonfinite_skip_drops_the_batch_and_counts_it():
    engine = FakeEngine(nan_values={2.0})
    records, _ = run_fake_loop(engine, NonFiniteAction.skip, max_steps=3)
    assert engine.trained == [0.0, 1.0, 3.0, 4.0, 5.0, 6.0]  # 2 never reached backward
    train = [r for r in records if "train/loss" in r]
    assert [r["train/loss"] for r in train] == [0.5, 3.5, 5.5] and train[-1]["train/skipped_nonfinite"] == 1


def test_nonfinite_stop_names_the_step_and_samples():
    with pytest.raises(NonFiniteLossError, match=r"at step 2 \(micro-batch 1/2, epoch 0\); sample ids: \['s2'\]"):
        run_fake_loop(FakeEngine(nan_values={2.0}), NonFiniteAction.stop)


def test_eval_every_n_epochs_and_best_saves():
    saves = []
    _, evals = run_fake_loop(FakeEngine(()), NonFiniteAction.stop, max_steps=9, every_n_epochs=2, saves=saves)
    assert evals == [8, 9]  # 4 steps per epoch: end of epoch 2, and the end
    assert saves == [(8, True), (9, False)]  # a new best is saved when found; the final save always


INTERRUPTED_SAVE = """
import json, sys
from pathlib import Path
import deepspeed, torch
from dsvl_exp.training import checkpoint as checkpoints, distributed

distributed.init_process_group()
root = Path(sys.argv[1])
config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 2},
          "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}
def engine():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    return deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=0.1), config=config,
                                dist_init_required=False)[0]
first = engine()
def train_step():
    first.backward(first(torch.ones(1, 4)).pow(2).sum()); first.step()
train_step()
checkpoints.save_checkpoint(first, root, 1, {"step": 1}, {"rank": 0}, "a: 1\\n")
saved_weight = first.module.weight.detach().clone()
train_step()
real_save, calls = first.checkpoint_engine.save, []
def failing_save(state_dict, path):  # the model states get written, the optimizer states do not
    calls.append(path)
    if len(calls) == 2:
        raise OSError("disk full (simulated)")
    return real_save(state_dict, path)
first.checkpoint_engine.save = failing_save
try:
    checkpoints.save_checkpoint(first, root, 2, {"step": 2}, {"rank": 0}, "a: 1\\n")
    failed = False
except checkpoints.CheckpointError as error:  # the OSError, as one message naming the intact checkpoint
    failed = "disk full (simulated)" in str(error) and "step-00000001 is intact" in str(error)
staging_after_failure = sorted(p.name for p in root.glob(".staging-*"))
second = engine()
trainer_state, rank_state = checkpoints.load_checkpoint(second, root / checkpoints.read_latest(root))
first.checkpoint_engine.save = real_save
checkpoints.save_checkpoint(first, root, 2, {"step": 2}, {"rank": 0}, "a: 1\\n")
print(json.dumps({"failed": failed, "calls": len(calls), "state": trainer_state,
                  "restored": torch.equal(second.module.weight, saved_weight),
                  "latest_after_retry": checkpoints.read_latest(root),
                  "staging_after_retry": sorted(p.name for p in root.glob(".staging-*")),
                  "staging_after_failure": staging_after_failure}))
"""


@pytest.mark.slow
def test_a_save_failing_half_way_leaves_the_previous_checkpoint_and_latest(tmp_path):
    script = tmp_path / "save.py"
    script.write_text(INTERRUPTED_SAVE)
    result = run_cli([sys.executable, script, tmp_path / "checkpoints"], timeout=300)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failed"] and report["calls"] == 2
    assert report["state"] == {"step": 1} and report["restored"]  # `latest` still named step 1, and it loads
    assert report["latest_after_retry"] == "step-00000002" and report["staging_after_retry"] == []
    assert report["staging_after_failure"] == []


def test_nonfinite_weights_are_detected_before_a_save():
    module = torch.nn.Linear(2, 2)
    engine = type("Engine", (), {"module": module})()
    assert checkpoints.parameters_finite(engine)
    with torch.no_grad():
        module.bias[1] = math.inf
    assert not checkpoints.parameters_finite(engine)
