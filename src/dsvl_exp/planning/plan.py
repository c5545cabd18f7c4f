"""A plan for one composed config: memory per rank against a card, what would fit, and time."""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf, open_dict

from dsvl_exp.errors import UserError
from dsvl_exp.models.flops import flop_counts
from dsvl_exp.models.freezing import resolve_trainable
from dsvl_exp.planning.activations import BatchShape
from dsvl_exp.planning.architecture import architecture_config, meta_model, run_vocabulary
from dsvl_exp.planning.hardware import Gpu
from dsvl_exp.planning.memory import ALLOCATOR_HEADROOM, memory_per_rank
from dsvl_exp.planning.timing import epoch_time
from dsvl_exp.planning.workload import DataProfile, data_profile, expected_batch

MAX_MICRO_BATCH = 64
ASSUMED_SUPERVISED_FRACTION = 0.5  # of the text positions, when no data can be read


def worst_case_shape(cfg: DictConfig, rows: int, tokens_per_image: int, profile: DataProfile | None) -> BatchShape:
    """The micro-batch memory must survive: every row as long as the longest sample (padded as
    the collator pads), with its images and supervised tokens."""
    pad = int(cfg.model.pad_to_multiple_of)
    if profile is not None:
        longest = int(profile.lengths.max())
        images = int(profile.images[profile.lengths.argmax()])
        supervised = math.ceil(longest * profile.supervised_fraction)
    else:
        longest = int(cfg.data.max_seq_len or cfg.decoder.max_position_embeddings)
        images = min(int(cfg.data.max_images_per_sample), longest // tokens_per_image)
        supervised = int((longest - images * tokens_per_image) * ASSUMED_SUPERVISED_FRACTION)
    length = -(-longest // pad) * pad
    return BatchShape(rows=rows, length=length, images_per_row=images, supervised_per_row=supervised)


def with_changes(cfg: DictConfig, **changes) -> DictConfig:
    changed = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(changed):
        for key, value in changes.items():
            OmegaConf.update(changed, key.replace("__", "."), value, merge=False)
    return changed


class Planner:
    """Holds what every variant of one config shares (tokenizer, data profile)."""

    def __init__(self, cfg: DictConfig, gpu: Gpu, ranks: int):
        self.cfg, self.gpu, self.ranks = cfg, gpu, ranks
        self.arch, pretrained_vocab = architecture_config(cfg)
        self.tokenizer = run_vocabulary(cfg, pretrained_vocab)
        self.model = meta_model(cfg, self.tokenizer)
        self.tokens_per_image = self.model.tokens_per_image
        try:
            self.profile, self.data_note = data_profile(cfg, self.tokenizer, self.tokens_per_image), None
        except (UserError, OSError) as error:
            self.profile, self.data_note = None, f"data not read ({error}); memory assumes rows of data.max_seq_len"

    def memory(self, cfg: DictConfig, rows: int, model=None) -> dict:
        arch, _ = architecture_config(cfg)
        shape = worst_case_shape(cfg, rows, self.tokens_per_image, self.profile)
        memory = memory_per_rank(cfg, arch, self.tokenizer, shape, self.ranks, model=model)
        memory["micro_batch_shape"] = vars(shape)
        return memory

    def largest_micro_batch(self, base: dict) -> int:
        """Every saved tensor of a step is per row (rotary tables and MMCA masks included), so
        activations grow in proportion to the rows; the rest of the total does not change. The
        allocator headroom scales with what it holds."""
        rows = int(self.cfg.train.micro_batch_size)
        per_row = base["activations"] / rows
        fixed = base["total"] - base["lines"]["allocator headroom"] - base["activations"]
        room = self.gpu.memory_bytes / (1 + ALLOCATOR_HEADROOM) - fixed
        if per_row <= 0:
            return MAX_MICRO_BATCH
        return max(0, min(math.floor(room / per_row), MAX_MICRO_BATCH))

    def alternatives(self) -> list[dict]:
        """The changes that cut memory, cheapest in speed first, each with its new total."""
        cfg = self.cfg
        changes = []
        if not cfg.train.gradient_checkpointing:
            changes.append(("train.gradient_checkpointing=true", {"train__gradient_checkpointing": True}))
        if int(cfg.zero.stage) != 3:
            changes.append(("zero=3", {"zero__stage": 3}))
        if str(cfg.zero.offload_optimizer.device) == "none":
            changes.append(("zero=3_offload", {"zero__stage": 3, "zero__offload_optimizer__device": "cpu",
                                               "zero__offload_param__device": "cpu"}))
        if resolve_trainable(cfg.train.decoder, cfg.decoder.pretrained, "train.decoder", allow_lora=True) is True:
            changes.append(("train.decoder=lora", {"train__decoder": "lora"}))
        length = int(cfg.data.max_seq_len or cfg.decoder.max_position_embeddings)
        if length > 1024:
            changes.append((f"data.max_seq_len={length // 2}", {"data__max_seq_len": length // 2}))
        results = []
        for override, change in changes:
            variant = with_changes(cfg, **change)
            # only LoRA changes the model's parameters; the others change how they are held
            model = meta_model(variant, self.tokenizer) if "train__decoder" in change else self.model
            total = self.memory(variant, int(cfg.train.micro_batch_size), model=model)["total"]
            results.append({"override": override, "total_bytes": total, "fits": total <= self.gpu.memory_bytes})
        return results

    def time(self, grad_accum: int, mfu: float, shape: dict) -> dict:
        """Per epoch from the data; without data, per step for rows of the worst-case shape."""
        rows = int(self.cfg.train.micro_batch_size)
        if self.profile is None:
            batch = {"positions": rows * shape["length"], "tokens": rows * shape["length"],
                     "images": rows * shape["images_per_row"], "supervised": rows * shape["supervised_per_row"]}
        else:
            batch = expected_batch(self.profile, rows, int(self.cfg.model.pad_to_multiple_of))
        timing = epoch_time(flop_counts(self.model), batch, rows, self.tokens_per_image,
                            self.profile.train_samples if self.profile else 0, self.ranks, grad_accum, self.gpu,
                            str(self.cfg.train.precision), mfu, bool(self.cfg.train.gradient_checkpointing))
        if self.profile is None:
            return {**timing, "steps_per_epoch": None, "epoch_seconds": None, "data": None}
        epochs = self.cfg.train.epochs
        if self.cfg.train.max_steps is not None:
            timing["run_seconds"] = int(self.cfg.train.max_steps) * timing["step_seconds"]
        elif epochs is not None:
            timing["run_seconds"] = int(epochs) * timing["epoch_seconds"]
        timing["data"] = self.profile.source
        timing["train_samples"] = self.profile.train_samples
        timing["mean_length"] = float(self.profile.lengths.mean())
        timing["mean_padded_length"] = batch["positions"] / rows
        return timing


def make_plan(cfg: DictConfig, gpu: Gpu, gpus_per_node: int, nodes: int, mfu: float) -> dict:
    from dsvl_exp.training.engine import resolve_grad_accum

    ranks = gpus_per_node * nodes
    planner = Planner(cfg, gpu, ranks)
    micro = int(cfg.train.micro_batch_size)
    try:
        grad_accum = resolve_grad_accum(cfg.train.global_batch_size, micro, ranks, int(cfg.train.grad_accum))
    except ValueError as error:
        raise UserError(str(error)) from None
    memory = planner.memory(cfg, micro, model=planner.model)
    fits = memory["total"] <= gpu.memory_bytes
    plan = {
        "gpu": {"name": gpu.name, "memory_bytes": gpu.memory_bytes},
        "ranks": ranks, "nodes": nodes, "gpus_per_node": gpus_per_node,
        "zero_stage": int(cfg.zero.stage), "precision": str(cfg.train.precision),
        "micro_batch_size": micro, "grad_accum": grad_accum,
        "gradient_checkpointing": bool(cfg.train.gradient_checkpointing),
        "tokens_per_image": planner.tokens_per_image,
        "memory": memory,
        "fits": fits,
        "largest_micro_batch": planner.largest_micro_batch(memory),
        "alternatives": [] if fits else planner.alternatives(),
        "time": planner.time(grad_accum, mfu, memory["micro_batch_shape"]),
        "notes": [note for note in (planner.data_note,) if note],
    }
    return plan
