"""Test environment: offline, no W&B, one thread, everything written under pytest's tmp dirs."""

from __future__ import annotations

import os

from helpers import RENDEZVOUS_VARIABLES, TEST_VARIABLES

os.environ.update(TEST_VARIABLES)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
    """Synthetic data and any other cache go to a per-session temp dir, never $HOME."""
    path = tmp_path_factory.mktemp("dsvl_cache")
    os.environ["DSVL_CACHE_DIR"] = str(path)
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))  # the chat history file
    return path


# What a process group started inside a test leaves in os.environ (training/distributed.py sets
# them) is removed after the test: with several tests per worker process, the next would inherit it.
@pytest.fixture(autouse=True)
def rendezvous_variables_restored():
    saved = {name: os.environ.get(name) for name in RENDEZVOUS_VARIABLES}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# `make test` runs on pytest-xdist workers: tests/xdist_scheduling.py keeps the tests that share a
# module- or session-scoped fixture in one worker; each worker checks that rule against what it collected.
@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: the suite also runs without it
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") == "loadgroup":
        from xdist_scheduling import FixtureSharingScheduling

        return FixtureSharingScheduling(config, log)
    return None


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        from xdist_scheduling import check_file_groups

        missed = check_file_groups(items)
        if missed:
            raise pytest.UsageError("tests/xdist_scheduling.py would split these files between workers: "
                                    + "; ".join(missed))


@pytest.fixture(scope="session")
def tokenizer():
    from dsvl_exp.models.tokenizer import load_tokenizer

    return load_tokenizer()


def build_tiny_model(tokenizer, image_order="forward", seed=0, attention="causal"):
    from dsvl_exp.models.decoder import build_llama_decoder
    from dsvl_exp.models.dsvl import DSVLModel
    from dsvl_exp.models.projection import build_baseline_projection
    from dsvl_exp.models.tokenizer import image_token_id
    from dsvl_exp.models.vision import build_clip_vision_tower

    torch.manual_seed(seed)
    vision = build_clip_vision_tower(image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    decoder = build_llama_decoder(len(tokenizer), hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=512, attention=attention)
    projection = build_baseline_projection(32, 32)
    return DSVLModel(vision, projection, decoder, image_token_id(tokenizer), tokenizer.pad_token_id,
                     tokenizer.eos_token_id, image_order=image_order)


@pytest.fixture()
def tiny_model(tokenizer):
    return build_tiny_model(tokenizer)


def compose_config(*overrides: str, hydra: bool = False, validate: bool = True):
    """The config the entry point would compose for these command-line overrides (`zero=3`
    typed as a user types it), checked as the entry point checks it. `hydra=True` adds the
    `hydra` node (then unchecked: it is not part of a run's config)."""
    from hydra import compose, initialize_config_dir

    from dsvl_exp.config.overrides import quote_numeric_group_choices
    from dsvl_exp.config.validation import validate_config
    from dsvl_exp.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=quote_numeric_group_choices(list(overrides)), return_hydra_config=hydra)
    if validate and not hydra:
        validate_config(cfg)
    return cfg


# One trained tiny model for the chat / evaluate / serve tests (session scope: trained once).
from inference_fixtures import shape_pictures, trained_run  # noqa: E402,F401
