"""The data config: the reference recipe's 9 datasets compose and build from one data root."""

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from dsvl_exp.data.build import build_conversations
from conftest import compose_config as compose_cfg
from reference_fixtures import write_reference_root


def build_from(cfg):
    data = cfg.data
    return build_conversations(
        synthetic=OmegaConf.to_container(data.synthetic, resolve=True) if data.synthetic else None,
        train=OmegaConf.to_container(data.train, resolve=True), eval=OmegaConf.to_container(data.eval, resolve=True),
        data_path=data.data_path, eval_split=data.eval_split, max_images_per_sample=data.max_images_per_sample,
        on_missing_image=data.on_missing_image, verify_images=data.verify_images, seed=cfg.seed,
    )


def test_reference_data_config_lists_the_nine_datasets_with_their_concatenation(tmp_path):
    cfg = compose_cfg("data=reference", f"data.data_path={write_reference_root(tmp_path)}")
    assert [(d.format, d.concatenate) for d in cfg.data.train] == [
        ("llava", 3), ("llava_dial", 2), ("otter_mimicit_cgd", 1), ("otter_mimicit_sd", 1), ("otter_mimicit_sn", 1),
        ("otter_mimicit_tvc", 1), ("otter_mimicit_vst", 1), ("llava_otter_blend", 1), ("sparkles_dialogue", 1)]
    assert (cfg.data.eval_split, cfg.data.max_seq_len, cfg.data.max_images_per_sample) == (0.1, 4096, 8)
    built = build_from(cfg)
    sources = {c.id.split(":")[0] for c in built.train + built.eval}
    assert {"otter_mimicit_cgd", "otter_mimicit_sd", "llava_otter_blend", "sparkles_dialogue"} <= sources
    # fixtures: llava 2, llava_dial 1, cgd 2, sd 2, sn/tvc/vst 2 each (the 3-image sample fits 8), blend 1, sparkles 1
    rounds = {}
    for c in built.train + built.eval:
        rounds[c.id.split(":")[0]] = rounds.get(c.id.split(":")[0], 0) + len(c.rounds)
    blend = rounds.pop("llava_otter_blend")
    assert rounds == {"llava": 2, "llava_dial": 2, "otter_mimicit_cgd": 3, "otter_mimicit_sd": 3, "otter_mimicit_sn": 3,
                      "otter_mimicit_tvc": 3, "otter_mimicit_vst": 3, "sparkles_dialogue": 2}  # nothing dropped
    # the blend draws its llava and CGD rounds at random, seeded by cfg.seed (0): 5 rounds; 10% held out
    assert (blend, len(built.train), len(built.eval)) == (5, 13, 1)


def test_default_and_native_data_configs_still_compose():
    assert compose_cfg().data.synthetic.num_train == 2000
    cfg = compose_cfg("data=native", "data.train.0.path=/x.jsonl", "data.eval.0.path=/y.jsonl")
    assert (cfg.data.train[0].format, cfg.data.train[0].samples, cfg.data.train[0].concatenate) == ("native", "all", 1)


def test_dataset_spec_keys_are_typed():
    with pytest.raises(ConfigCompositionException):
        compose_cfg("data=reference", "data.data_path=/d", "data.train.0.concatenat=3")
    cfg = compose_cfg("data.train=[{format: llava_json, path: /a.json, weight: 0.5, concatenate: 2}]")
    assert (cfg.data.train[0].weight, cfg.data.train[0].samples) == (0.5, "all")
