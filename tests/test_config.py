"""The config fails early: typed closed choices, unknown keys (also with `+`), incompatible
parts and datasets without a file are refused at composition, before anything is built; every
experiment composes; user experiment folders are on the search path; one source per default."""

import dataclasses
from pathlib import Path

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from conftest import compose_config as compose_cfg
from dsvl_exp.config import schema
from dsvl_exp.config.choices import Attention, ImageOrder, Scheduler
from dsvl_exp.config.overrides import quote_numeric_group_choices
from dsvl_exp.errors import ConfigError
from dsvl_exp.train import CONFIG_DIR

CONF = Path(CONFIG_DIR)


def test_quoting_keeps_user_syntax_working():
    assert quote_numeric_group_choices(["zero=3", "-m", "zero=2,3", "optim.lr=3", "seed=3"]) == [
        "zero='3'", "-m", "zero='2','3'", "optim.lr=3", "seed=3"]


def test_multirun_over_zero_stages_as_typed_sweeps_two_group_choices():
    """`-m zero=2,3` reaches Hydra's sweeper as two string choices (a group choice must be a string)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    (unquoted,) = parser.parse_overrides(["zero=2,3"])
    assert list(unquoted.sweep_iterator()) == [2, 3]  # ints: "Config group override must be a string"
    (override,) = parser.parse_overrides(quote_numeric_group_choices(["zero=2,3"]))
    assert override.is_sweep_override() and [choice.text for choice in override.sweep_iterator()] == ["2", "3"]


@pytest.mark.parametrize("stage", ["2", "3"])
def test_zero_stages_compose(stage):
    cfg = compose_cfg(f"zero={stage}")
    assert cfg.zero.stage == int(stage)


def test_default_is_the_tiny_embedded_setting():
    cfg = compose_cfg()
    assert cfg.vision.pretrained is None and cfg.decoder.pretrained is None
    assert (cfg.vision.hidden_size, cfg.vision.patch_size, cfg.decoder.hidden_size) == (64, 8, 64)
    assert cfg.decoder.attention == "causal" and cfg.model.image_order == "forward"
    assert cfg.data.synthetic.num_train == 2000 and cfg.launcher.kind == "local" and cfg.zero.stage == 2
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["tokenizer"]["path"] is None
    assert resolved["data"]["synthetic"]["root"].endswith("/synthetic")


def test_user_keys_override():
    cfg = compose_cfg("optim.lr=5e-4", "train.max_steps=7", "train.micro_batch_size=2", "train.grad_accum=4",
                      "seed=3", "logger.wandb.mode=offline", "decoder.pretrained=/models/llama",
                      validate=False)  # /models/llama exists only on the user's machine
    assert (cfg.optim.lr, cfg.train.max_steps, cfg.train.micro_batch_size, cfg.train.grad_accum, cfg.seed) == (5e-4, 7, 2, 4, 3)
    assert cfg.logger.wandb.mode == "offline"
    assert OmegaConf.to_container(cfg, resolve=True)["tokenizer"]["path"] == "/models/llama"


def test_typo_and_wrong_type_fail_at_composition():
    with pytest.raises(ConfigCompositionException):
        compose_cfg("optim.lrr=1e-3")
    with pytest.raises(ConfigCompositionException):
        compose_cfg("train.max_steps=many")
    with pytest.raises(ConfigCompositionException):
        compose_cfg("vision.hidden_sise=8")


@pytest.mark.parametrize("override, message", [
    ("+optim.lrr=1", r"optim\.lrr \(did you mean optim\.lr\?\)"),
    ("+vision.hidden_sise=8", r"vision\.hidden_sise \(did you mean vision\.hidden_size\?\)"),
    ("+data.train.0.fromat=native", None),  # a list item's schema is checked too (when the list has one)
    ("+sed=1", r"sed \(did you mean seed\?\)"),
])
def test_unknown_keys_are_refused_even_with_plus(override, message):
    if message is None:
        with pytest.raises(ConfigError, match=r"data\.train\.0\.fromat \(did you mean data\.train\.0\.format\?\)"):
            compose_cfg("data=native", "data.train.0.path=a.jsonl", "data.eval=[]", override)
        return
    with pytest.raises(ConfigError, match=message):
        compose_cfg(override)


@pytest.mark.parametrize("override, allowed", [
    ("model.image_order=bogus", "[forward, reversed_legacy]"),
    ("train.precision=fp64x", "[fp32, bf16, fp16]"),
    ("data.on_missing_image=ignore", "[error, skip]"),
    ("launcher.kind=k8s", "[local, slurm]"),
    ("optim.scheduler.name=nope", "[linear, cosine, "),
    ("decoder.attention=flash", "[causal, mmca, mmca_legacy, mmca_flex]"),
    ("zero.offload_param.device=disk", "[none, cpu, nvme]"),
    ("launcher.start_method=thread", "[spawn, fork, forkserver]"),
    ("logger.wandb.mode=on", "[offline, online, disabled]"),
    ("train.on_nonfinite=ignore", "[stop, skip]"),
])
def test_closed_choices_fail_at_composition_listing_the_allowed_values(override, allowed):
    with pytest.raises(ConfigCompositionException) as failure:
        compose_cfg(override)
    assert f"expected one of {allowed}" in str(failure.value.__cause__)


def test_wandb_mode_from_the_environment_is_checked_too(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ConfigError, match=r"logger\.wandb\.mode.*sometimes"):
        compose_cfg()


def test_choice_lists_are_the_libraries_and_models_lists():
    from transformers import get_scheduler
    from transformers.trainer_utils import SchedulerType
    import torch

    from dsvl_exp.models.decoder import ATTENTION_CHOICES
    from dsvl_exp.models.splice import IMAGE_ORDERS

    assert [c.value for c in Attention] == list(ATTENTION_CHOICES)
    assert [c.value for c in ImageOrder] == list(IMAGE_ORDERS)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    for choice in Scheduler:
        assert SchedulerType(choice.value)
        get_scheduler(choice.value, optimizer, num_warmup_steps=1, num_training_steps=10)
    assert f"{Scheduler.cosine}" == str(Scheduler.cosine) == "cosine"


@pytest.mark.parametrize("projection", ["vit", "perceiver"])
def test_incompatible_parts_are_refused_at_composition(projection):
    with pytest.raises(ConfigError, match=f"vision=qwen cannot be followed by projection={projection}.*projection=baseline"):
        compose_cfg("vision=qwen", f"projection={projection}")
    assert compose_cfg("vision=qwen", "projection=baseline").vision.num_queries == 16


def test_native_data_without_an_eval_file_says_it_is_the_eval_set():
    with pytest.raises(ConfigError, match=r"data\.eval\.0\.path is not set: .*eval set.*data\.eval=\[\].*data\.eval_split"):
        compose_cfg("data=native", "data.train.0.path=train.jsonl")
    with pytest.raises(ConfigError, match=r"data\.train\.0\.path is not set"):
        compose_cfg("data=native", "data.eval=[]")
    cfg = compose_cfg("data=native", "data.train.0.path=train.jsonl", "data.eval=[]", "data.eval_split=0.1")
    assert cfg.data.eval == [] and cfg.data.synthetic is None


def test_smoke_experiment_states_only_deltas_and_keeps_the_users_data():
    cfg = compose_cfg("experiment=smoke")
    assert cfg.train.max_steps == 20 and cfg.data.synthetic.num_train == 64
    assert cfg.optim.lr == compose_cfg().optim.lr
    # before: 128 training conversations (64 synthetic added to the user's 64)
    cfg = compose_cfg("experiment=smoke", "data=native", "data.train.0.path=mine.jsonl", "data.eval.0.path=e.jsonl")
    assert cfg.data.synthetic is None and [d.path for d in cfg.data.train] == ["mine.jsonl"]


# the packaged experiments and the checkout's experiments/ (on the search path from a checkout)
EXPERIMENTS = sorted({path.stem for root in (CONF, CONF.parents[2] / "experiments") for path in (root / "experiment").glob("*.yaml")})


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment, monkeypatch):
    """With the one value only the user can give (the data root), every experiment passes every check
    (on a machine with a GPU: an fp16 recipe is refused on one without)."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    try:
        compose_cfg(f"experiment={experiment}")
    except ConfigError as error:  # the only acceptable refusal: naming the data it needs
        assert "data.data_path" in str(error), error
    cfg = compose_cfg(f"experiment={experiment}", "data.data_path=/data")
    assert not OmegaConf.missing_keys(cfg)
    assert OmegaConf.to_container(cfg, resolve=True)


def test_user_experiment_folder_is_on_the_search_path(tmp_path, monkeypatch):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /zero: '3'\noptim:\n  lr: 0.0042\n")
    with pytest.raises(ConfigCompositionException, match="mine"):
        compose_cfg("experiment=mine")
    monkeypatch.setenv("DSVL_EXPERIMENTS_DIR", str(tmp_path))
    cfg = compose_cfg("experiment=mine")
    assert cfg.optim.lr == 0.0042 and cfg.zero.stage == 3
    assert compose_cfg("experiment=smoke").train.max_steps == 20  # the packaged ones still found
    monkeypatch.delenv("DSVL_EXPERIMENTS_DIR")
    cfg = compose_cfg("experiment=mine", f"hydra.searchpath=[file://{tmp_path}]")
    assert cfg.optim.lr == 0.0042


SCHEMAS = {"vision/clip": schema.ClipVisionConfig, "vision/qwen": schema.QwenVisionConfig,
           "decoder/llama": schema.LlamaDecoderConfig, "projection/baseline": schema.BaselineProjectionConfig,
           "projection/vit": schema.ViTProjectionConfig, "projection/perceiver": schema.PerceiverProjectionConfig,
           "zero/2": schema.ZeroConfig, "zero/3": schema.ZeroConfig, "zero/3_offload": schema.ZeroConfig,
           "launcher/local": schema.LauncherConfig,
           "data/synthetic": schema.DataConfig, "data/native": schema.DataConfig, "data/reference": schema.DataConfig}


@pytest.mark.parametrize("option", sorted(SCHEMAS))
def test_an_option_file_states_only_what_differs_from_the_schema(option):
    """One source per default: before, CLIP's sizes were 224/14/1024 in the schema and 32/8/64 in the YAML."""
    stated = yaml.safe_load((CONF / f"{option}.yaml").read_text()) or {}
    defaults = {f.name: f.default for f in dataclasses.fields(SCHEMAS[option])
                if f.default is not dataclasses.MISSING}
    repeated = {key: value for key, value in stated.items() if key != "defaults" and key in defaults
                and value == defaults[key] and value is not None}
    assert not repeated
    assert set(stated) - {"defaults"} <= {f.name for f in dataclasses.fields(SCHEMAS[option])}


@pytest.mark.parametrize("overrides, message", [
    (["train.projection=lora"], r"train\.projection='lora': expected true, false or auto"),
    (["train.decoder=sometimes"], r"train\.decoder='sometimes': expected true, false, auto or lora"),
    (["train.max_steps=null"], r"train\.max_steps and train\.epochs are both null"),
    (["train.micro_batch_size=0"], r"train\.micro_batch_size=0 must be at least 1"),
    (["zero.offload_param.device=cpu"], r"zero\.offload_param\.device=cpu needs ZeRO stage 3"),
    (["optim.warmup_ratio=5"], r"optim\.warmup_ratio=5\.0 must be in \[0, 1\]"),
    (["eval.generation=false"], r"eval\.monitor='eval/accuracy' will not be logged.*eval\.generation=true"),
])
def test_training_settings_that_cannot_run_are_refused_at_composition(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose_cfg(*overrides)
    assert compose_cfg("zero=3", "zero.offload_param.device=cpu", "train.decoder=lora").zero.offload_param.device == "cpu"


def test_a_missing_local_pretrained_folder_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"decoder\.pretrained=/nowhere/llama: no such file or folder"):
        compose_cfg("decoder.pretrained=/nowhere/llama")
    assert compose_cfg(f"vision.pretrained={tmp_path}", "decoder.pretrained=org/hub-name").decoder.pretrained == "org/hub-name"


def _leaves(node, prefix=""):
    """key path -> value of a YAML overlay (a list is one value: it replaces the default's list)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_states_only_its_deltas(experiment):
    """An overlay that restates a default hides what the experiment changes: every group override
    and every key of experiment/<name>.yaml differs from the value it replaces (the defaults, with
    the experiment's own group overrides applied)."""
    path = next(p for root in (CONF, CONF.parents[2] / "experiments") if (p := root / "experiment" / f"{experiment}.yaml").exists())
    overlay = OmegaConf.to_container(OmegaConf.load(path))
    base_choices = compose_cfg(hydra=True).hydra.runtime.choices
    group_overrides = []
    for entry in overlay.pop("defaults", []):
        (key, choice), = entry.items()
        group = key.removeprefix("override /")
        if not group.startswith("hydra/"):
            assert str(choice) != base_choices[group], f"{path.name}: override /{group}: {choice} is the default"
            group_overrides.append(f"{group}={choice}")
    overlay.pop("hydra", None)  # the sweep's settings: not part of a run's config
    base = OmegaConf.to_container(compose_cfg(*group_overrides, validate=False), enum_to_str=True)
    for key, value in _leaves(overlay):
        default = OmegaConf.select(OmegaConf.create(base), key)
        assert value != default, f"{path.name}: {key}: {value!r} restates the default"
