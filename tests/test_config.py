import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from dsvl_exp.config.overrides import quote_numeric_group_choices
from dsvl_exp.train import CONFIG_DIR


def compose_cfg(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=quote_numeric_group_choices(list(overrides)))


def test_quoting_keeps_user_syntax_working():
    assert quote_numeric_group_choices(["zero=3", "-m", "zero=2,3", "optim.lr=3", "seed=3"]) == [
        "zero='3'", "-m", "zero='2','3'", "optim.lr=3", "seed=3"]


@pytest.mark.parametrize("stage", ["2", "3"])
def test_zero_stages_compose(stage):
    cfg = compose_cfg(f"zero={stage}")
    assert cfg.zero.stage == int(stage)


def test_default_is_the_tiny_embedded_setting():
    cfg = compose_cfg()
    assert cfg.vision.pretrained is None and cfg.decoder.pretrained is None
    assert cfg.decoder.attention == "causal" and cfg.model.image_order == "forward"
    assert cfg.data.synthetic.num_train > 0
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["tokenizer"]["path"] is None
    assert resolved["data"]["synthetic"]["root"].endswith("/synthetic")


def test_user_keys_override():
    cfg = compose_cfg("optim.lr=5e-4", "train.max_steps=7", "train.micro_batch_size=2", "train.grad_accum=4",
                      "seed=3", "logger.wandb.mode=offline", "decoder.pretrained=/models/llama")
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


def test_smoke_experiment_states_only_deltas():
    cfg = compose_cfg("experiment=smoke")
    assert cfg.train.max_steps == 20 and cfg.data.synthetic.num_train == 64
    assert cfg.optim.lr == compose_cfg().optim.lr
