"""Registers `--model dsvl` with lmms-eval (its `lmms_eval.models` entry point, pyproject.toml)."""

from lmms_eval.models.registry_v2 import ModelManifest

MANIFEST = ModelManifest(model_id="dsvl", simple_class_path="dsvl_exp.harness.lmms_eval_model.DSVLLmms")
