"""Dataclass schemas for every config group, registered in Hydra's ConfigStore.

Each YAML option in `conf/<group>/` starts from its schema (`defaults: [/schema/<group>/<name>@_here_]`),
so a misspelt key, a wrong type or a value outside a closed choice (config/choices.py) fails at
composition; config/validation.py adds the checks that span keys.

One source per default: the values here are the defaults (the model parts' are the tiny
architecture `make demo` trains); an option file in `conf/` states only what that option
changes. A field that every option must choose is MISSING here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from dsvl_exp.config.choices import (
    Attention,
    ImageOrder,
    LauncherKind,
    NonFiniteAction,
    OffloadDevice,
    OnBadRecord,
    OnMissingImage,
    Precision,
    Scheduler,
    SingleRankZero,
    StartMethod,
    WandbMode,
)
from dsvl_exp.constants import DEFAULT_SYSTEM_PROMPT


# ---- model parts -----------------------------------------------------------------------------
# Architecture values build a random-initialised tiny model when `pretrained` is null; with
# `pretrained` the checkpoint's own config.json rules. The real sizes are in each YAML's comment.
@dataclass
class ClipVisionConfig:
    _target_: str = "dsvl_exp.models.vision.build_clip_vision_tower"
    pretrained: Optional[str] = None
    image_size: int = 32
    patch_size: int = 8
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    feature_layer: int = -1  # -1: last hidden state, CLS kept (DeepSpeed-VisualChat); -2: LLaVA


@dataclass
class QwenVisionConfig:
    _target_: str = "dsvl_exp.models.qwen_vit.build_qwen_vision_tower"
    pretrained: Optional[str] = None  # a folder from scripts/extract_qwen_vl.py
    image_size: int = 32
    patch_size: int = 8
    width: int = 64
    layers: int = 2
    heads: int = 4
    mlp_size: int = 128
    output_dim: int = 64
    num_queries: int = 16  # a square: the resampler's query grid (4x4 here, 16x16 in Qwen-VL)


@dataclass
class LlamaDecoderConfig:
    _target_: str = "dsvl_exp.models.decoder.build_llama_decoder"
    pretrained: Optional[str] = None
    attention: Attention = Attention.causal
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: Optional[int] = None  # null: num_heads (no grouped-query attention)
    intermediate_size: int = 128
    max_position_embeddings: int = 1024
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0


@dataclass
class BaselineProjectionConfig:
    _target_: str = "dsvl_exp.models.projection.baseline_projection_after"


@dataclass
class ViTProjectionConfig:
    _target_: str = "dsvl_exp.models.projection.vit_projection_after"


@dataclass
class PerceiverProjectionConfig:
    _target_: str = "dsvl_exp.models.projection.perceiver_projection_after"
    num_queries: int = 16  # a square grid; 256 (16x16) in the reference


@dataclass
class LoraPartConfig:
    # used when train.<part>=lora
    r: int = 8
    alpha: float = 16.0  # peft scales by alpha / r; alpha=1 is the reference's 1/r
    dropout: float = 0.0
    # module-name suffixes (a list) or one regex over full names; null: the part's default
    target_modules: Any = None


@dataclass
class LoraConfig:
    decoder: LoraPartConfig = field(default_factory=LoraPartConfig)
    vision: LoraPartConfig = field(default_factory=LoraPartConfig)


@dataclass
class TokenizerConfig:
    _target_: str = "dsvl_exp.models.tokenizer.load_tokenizer"
    # null: the decoder's own tokenizer when decoder.pretrained is set, else the bundled tiny one
    path: Optional[str] = "${decoder.pretrained}"


@dataclass
class ModelConfig:
    image_order: ImageOrder = ImageOrder.forward  # reversed_legacy: the reference's bug #800
    pad_to_multiple_of: int = 8


# ---- distributed / DeepSpeed -----------------------------------------------------------------
@dataclass
class OffloadConfig:
    """DeepSpeed's `offload_optimizer` / `offload_param` node, in its names (device none: no
    offload). Its other keys come with `+` (`+zero.offload_optimizer.nvme_path=/nvme`)."""

    checked_by_deepspeed: ClassVar[bool] = True  # DeepSpeed's config model checks every key
    device: OffloadDevice = OffloadDevice.none
    pin_memory: bool = True  # DeepSpeed's default


@dataclass
class ZeroConfig:
    """DeepSpeed's `zero_optimization`, in its own names and shapes, passed through to the engine
    (training/engine.py) and checked at start-up by DeepSpeed's config model, so any key DeepSpeed
    knows can be set (`+zero.sub_group_size=1e9`). Only `single_rank` is the project's own."""

    checked_by_deepspeed: ClassVar[bool] = True
    stage: int = MISSING  # each conf/zero option says its stage
    overlap_comm: bool = False
    contiguous_gradients: bool = True
    reduce_bucket_size: int = 50_000_000
    allgather_bucket_size: int = 50_000_000
    offload_optimizer: OffloadConfig = field(default_factory=OffloadConfig)
    offload_param: OffloadConfig = field(default_factory=OffloadConfig)  # stage 3 only
    stage3_param_persistence_threshold: int = 10_000
    stage3_max_live_parameters: int = 30_000_000
    stage3_prefetch_bucket_size: int = 5_000_000
    single_rank: SingleRankZero = SingleRankZero.stage0


@dataclass
class LauncherConfig:
    """How the ranks of one run start. `local`: this process starts `nproc_per_node` ranks with
    torch's elastic launch API (c10d rendezvous). `slurm`: Hydra's submitit launcher starts one
    SLURM task per rank (`-m` needed) and the rendezvous comes from the SLURM environment.
    Under torchrun / the deepspeed launcher the ranks already exist and these are ignored."""

    kind: LauncherKind = MISSING  # each conf/launcher option says its kind
    nproc_per_node: int = 1  # ranks per node (SLURM: tasks per node)
    rdzv_backend: str = "c10d"
    rdzv_endpoint: Optional[str] = None  # null: 127.0.0.1 and a free port
    max_restarts: int = 0  # restarting from scratch only repeats work until resume exists
    monitor_interval: float = 0.1
    start_method: StartMethod = StartMethod.spawn
    omp_num_threads: Optional[int] = None  # null: CPU cores // ranks per node, at least 1
    nodes: int = 1  # SLURM only
    gpus_per_node: Optional[int] = None  # SLURM only; null: no GPU request


# ---- data ------------------------------------------------------------------------------------
@dataclass
class SyntheticDataConfig:
    root: str = "${oc.env:DSVL_CACHE_DIR,'~/.cache/dsvl_exp'}/synthetic"
    num_train: int = 2000
    num_eval: int = 200
    image_size: int = 32
    seed: int = 0


@dataclass
class DatasetSpec:
    format: str = "native"  # native | llava_json | a reference dataset name (aokvqa, llava, ...)
    path: Optional[str] = None  # the file, or the reference data root (null: data.data_path)
    image_dir: Optional[str] = None  # where relative image paths point (null: the format's default)
    samples: Any = "all"  # all | a count drawn without replacement (after concatenation)
    weight: Optional[float] = None  # or a sampling ratio of the dataset's size (2.0 = twice)
    concatenate: int = 1  # up to N samples joined into one multi-image, multi-round sample


@dataclass
class DataConfig:
    synthetic: Optional[SyntheticDataConfig] = None
    train: List[DatasetSpec] = field(default_factory=list)
    eval: List[DatasetSpec] = field(default_factory=list)
    data_path: Optional[str] = None  # root of the reference datasets' layout
    eval_split: float = 0.0  # fraction of the training blend held out for eval (reference: 0.1)
    max_images_per_sample: int = 8
    max_seq_len: Optional[int] = 4096  # decoder tokens, each image counting tokens_per_image
    on_missing_image: OnMissingImage = OnMissingImage.error  # skip: counted and logged
    on_bad_record: OnBadRecord = OnBadRecord.error  # a stray <image> in a text field; skip: counted and logged
    # header | full (decode every image once) | false (existence only); true = header. A str, not an
    # Enum: YAML reads `false` as a boolean; data.checks.verify_mode validates it.
    verify_images: str = "header"
    redraw_each_epoch: bool = True  # re-draw prompts, round order and concatenation groups every epoch (as the reference)
    cache_dir: Optional[str] = "${oc.env:DSVL_CACHE_DIR,'~/.cache/dsvl_exp'}/data"  # parsed data + lengths; null: off
    group_by_length: bool = False
    debug_dump: int = 0  # write the first N rendered training samples to <run dir>/debug_samples
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    num_workers: int = 0


# ---- training --------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    max_steps: Optional[int] = 500  # optimizer steps; when null, `epochs` decides (500: `make demo` in about a minute)
    epochs: Optional[int] = None
    micro_batch_size: int = 8
    grad_accum: int = 1
    global_batch_size: Optional[int] = None  # when set: grad_accum = global / (micro x ranks)
    precision: Precision = Precision.fp32
    gradient_clipping: float = 1.0
    # what trains: true | false | auto (auto: only when randomly initialised); vision and
    # decoder also take lora (frozen, with LoRA adapters from the `lora` group trained)
    vision: Any = "auto"
    projection: Any = True
    embeddings: Any = True
    decoder: Any = "auto"
    gradient_checkpointing: bool = False  # vision encoder and decoder
    log_every_n_steps: int = 10
    progress_bar: bool = True
    on_nonfinite: NonFiniteAction = NonFiniteAction.stop  # a NaN/inf loss: stop | skip


@dataclass
class AdamWConfig:
    """The optimizer as a partial (lightning-hydra-template's configs/model/mnist.yaml): the engine
    calls it with the project's parameter groups (decay / no decay, embedding lr) and `lr=optim.lr`
    (training/engine.py). `optimizer=sgd` swaps it; `optim.optimizer._target_=<class>` names
    another one that takes these arguments."""

    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    momentum: float = 0.9
    nesterov: bool = False


@dataclass
class SchedulerConfig:
    """Called as `scheduler(optimizer=, num_warmup_steps=, num_training_steps=)` (training/recipe.py)."""

    _target_: str = "transformers.get_scheduler"
    _partial_: bool = True
    name: Scheduler = Scheduler.cosine  # transformers' schedules (config/choices.py)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    embedding_lr: Optional[float] = None  # the reference's learning_rate_pretraining_components
    weight_decay: float = 0.0  # of the decayed parameter group (matrices), 0 for biases and norms
    optimizer: Any = MISSING  # the `optimizer` group: adamw | sgd
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    warmup_ratio: float = 0.05
    warmup_steps: Optional[int] = None  # overrides warmup_ratio when set


@dataclass
class EvalConfig:
    every_n_steps: Optional[int] = 500
    every_n_epochs: Optional[int] = None  # also (or instead) at the end of every N-th epoch
    at_start: bool = False
    max_batches: Optional[int] = None
    batch_size: int = 16
    generation: bool = True
    max_new_tokens: int = 8
    max_conversations: Optional[int] = None
    monitor: str = "eval/accuracy"  # the metric the task returns (Optuna optimises it)


@dataclass
class CheckpointConfig:
    """DeepSpeed checkpoints under `dir` (null: <run dir>/checkpoints), one tag per step."""

    dir: Optional[str] = None
    every_n_steps: Optional[int] = 500  # null: only the final one (and SIGTERM/SIGINT, and new bests)
    keep_last: Optional[int] = 2  # older step checkpoints deleted once a newer one is complete; best kept
    export: bool = True  # at the end: <run dir>/export (and <run dir>/best when eval picks one)


@dataclass
class ResumeConfig:
    # null: a fresh run (refuses a run directory that already has metrics or checkpoints);
    # auto: the newest complete checkpoint of this run directory; or a checkpoint path.
    # `resume=auto` / `resume=PATH` on the command line mean `resume.checkpoint=...`.
    checkpoint: Optional[str] = None
    allow_config_change: bool = False  # resume although the config differs in meaning
    # true: read the checkpoint's DeepSpeed pickles unrestricted (they may run code; only for files you trust).
    # false: weights-only with DeepSpeed's own types allowed (training/safe_loading.py).
    trust_checkpoint: bool = False


@dataclass
class WandbConfig:
    mode: WandbMode = "${oc.env:WANDB_MODE,offline}"  # type: ignore[assignment]  (checked when resolved)
    project: str = "dsvl_exp"
    entity: Optional[str] = None
    name: Optional[str] = None  # null: the experiment and the command-line overrides
    group: Optional[str] = None  # null: a multirun's jobs share one group (its sweep directory)
    tags: List[str] = field(default_factory=list)  # the group choices are added (vision:clip, zero:2, ...)


@dataclass
class TensorBoardConfig:
    save_dir: Optional[str] = None  # null: <run>/tensorboard (`tensorboard --logdir` it)


@dataclass
class MlflowConfig:
    # null: $MLFLOW_TRACKING_URI when set, else a local file store in <run>/mlruns
    tracking_uri: Optional[str] = None
    experiment_name: str = "dsvl_exp"
    tags: Dict[str, str] = field(default_factory=dict)


@dataclass
class CsvConfig:
    filename: str = "metrics.csv"  # in the run directory, one column per metric


@dataclass
class LoggerConfig:
    """The trackers of a run: each option of the `logger` group fills its own key, and
    `logger=[wandb,tensorboard]` (or `logger=many_loggers`) fills several. A key left null is a
    tracker not used. All get the same scalars, config and run name; metrics.jsonl is always written."""

    run_name: Optional[str] = None  # null: the experiment and the command-line overrides
    wandb: Optional[WandbConfig] = None
    tensorboard: Optional[TensorBoardConfig] = None
    mlflow: Optional[MlflowConfig] = None
    csv: Optional[CsvConfig] = None


@dataclass
class ManifestConfig:
    # <run dir>/uncommitted.diff: the uncommitted changes of the dsvl_exp checkout, so the exact code can be
    # rebuilt. It copies whatever dirty tracked files hold (secrets too); false: only its sha256 is recorded.
    include_diff: bool = True


@dataclass
class Config:
    vision: Any = MISSING
    decoder: Any = MISSING
    projection: Any = MISSING
    zero: ZeroConfig = MISSING
    data: DataConfig = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    launcher: LauncherConfig = MISSING
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)
    manifest: ManifestConfig = field(default_factory=ManifestConfig)
    seed: int = 0


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="schema/vision", name="clip", node=ClipVisionConfig)
    cs.store(group="schema/vision", name="qwen", node=QwenVisionConfig)
    cs.store(group="schema/decoder", name="llama", node=LlamaDecoderConfig)
    cs.store(group="schema/projection", name="baseline", node=BaselineProjectionConfig)
    cs.store(group="schema/projection", name="vit", node=ViTProjectionConfig)
    cs.store(group="schema/projection", name="perceiver", node=PerceiverProjectionConfig)
    cs.store(group="schema/zero", name="zero", node=ZeroConfig)
    cs.store(group="schema/optimizer", name="adamw", node=AdamWConfig)
    cs.store(group="schema/optimizer", name="sgd", node=SGDConfig)
    cs.store(group="schema/launcher", name="launcher", node=LauncherConfig)
    cs.store(group="schema/data", name="data", node=DataConfig)
