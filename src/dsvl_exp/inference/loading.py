"""MODEL on the command line -> a loaded model with its tokenizer, template and image processor.

MODEL is an export folder (it holds `config.json`) or a run directory: its `export/` when the
run wrote one, otherwise its newest checkpoint (`checkpoints/latest`; a checkpoint folder works
too), exported once into the cache (`$DSVL_CACHE_DIR/exports/`, keyed by the checkpoint's path
and time) and loaded from there. The run's (or checkpoint's) `config.yaml` also supplies the
system prompt and the image limit it trained with.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from dsvl_exp.data.template import DEFAULT_SYSTEM_PROMPT, ChatTemplate
from dsvl_exp.errors import UserError
from dsvl_exp.files import publish_folder
from dsvl_exp.inference.images import ImageCache

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
RUN_CONFIG_FILE = "config.yaml"
# The reference's --max_num_image_per_sample, and data.max_images_per_sample's default.
DEFAULT_MAX_IMAGES = 8


class ModelPathError(UserError, ValueError):
    """MODEL names nothing loadable; the message says what was looked for and how to fix it."""


@dataclass
class LoadedModel:
    model: object  # DSVLModel, in eval mode
    tokenizer: object
    template: ChatTemplate
    images: ImageCache
    max_images: int = DEFAULT_MAX_IMAGES
    source: str = ""


def cache_root() -> Path:
    return Path(os.path.expanduser(os.environ.get("DSVL_CACHE_DIR", "~/.cache/dsvl_exp")))


@contextlib.contextmanager
def stdout_to_stderr():
    """Send everything written to stdout (Python prints, loggers holding sys.stdout, C code) to
    stderr for the duration: at the file-descriptor level, since DeepSpeed's logger keeps its own
    reference to the stream."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def export_checkpoint_cached(checkpoint: Path, trust: bool = False) -> Path:
    """Its pickles are read weights-only unless `trust` (training/safe_loading.py)."""
    from dsvl_exp.training.exporting import export_checkpoint

    checkpoint = checkpoint.resolve()
    stamp = f"{checkpoint}:{checkpoint.stat().st_mtime_ns}"
    target = cache_root() / "exports" / hashlib.sha256(stamp.encode()).hexdigest()[:16]
    def fill(folder: Path) -> None:
        log.info("exporting checkpoint %s into %s", checkpoint, target)
        with stdout_to_stderr():  # DeepSpeed and zero_to_fp32 print; stdout carries answers only
            export_checkpoint(checkpoint, folder, trust=trust)

    return publish_folder(target, CONFIG_FILE, fill)


def resolve_model_dir(model: str | Path, trust_checkpoint: bool = False) -> tuple[Path, Path | None]:
    """(export folder, the folder whose config.yaml describes the training run, or None).
    `trust_checkpoint`: a checkpoint's DeepSpeed pickles are read unrestricted (they may run code)."""
    from dsvl_exp.training.exporting import ExportError, resolve_checkpoint

    path = Path(model).expanduser()
    if not path.exists():
        raise ModelPathError(f"MODEL {path} does not exist; give an export folder (with {CONFIG_FILE}) or a run directory")
    if (path / CONFIG_FILE).is_file():
        return path, path.parent if (path.parent / RUN_CONFIG_FILE).is_file() else None
    if (path / "export" / CONFIG_FILE).is_file():
        return path / "export", path
    try:
        checkpoint = resolve_checkpoint(path)  # a run's checkpoints/latest, or one checkpoint folder
    except ExportError:
        raise ModelPathError(
            f"MODEL {path} is neither an export folder (no {CONFIG_FILE}) nor a run directory with export/{CONFIG_FILE} "
            "or checkpoints/latest; point it at a run directory of `python -m dsvl_exp.train`, a checkpoint folder "
            "or an export folder (`python -m dsvl_exp.export`)"
        ) from None
    return export_checkpoint_cached(checkpoint, trust_checkpoint), checkpoint


def run_settings(run_dir: Path | None) -> tuple[str, int]:
    """System prompt and image limit of the training run, where its config.yaml is at hand (the
    export folder does not record them)."""
    if run_dir is None or not (run_dir / RUN_CONFIG_FILE).is_file():
        return DEFAULT_SYSTEM_PROMPT, DEFAULT_MAX_IMAGES
    data = (yaml.safe_load((run_dir / RUN_CONFIG_FILE).read_text()) or {}).get("data") or {}
    return data.get("system_prompt", DEFAULT_SYSTEM_PROMPT), int(data.get("max_images_per_sample", DEFAULT_MAX_IMAGES))


def wrap_model(model, tokenizer, system_prompt: str = DEFAULT_SYSTEM_PROMPT,
               max_images: int = DEFAULT_MAX_IMAGES, source: str = "") -> LoadedModel:
    """An in-memory model ready for chat/evaluation (what `load_model` returns for a folder)."""
    return LoadedModel(model=model.eval(), tokenizer=tokenizer, template=ChatTemplate(system_prompt=system_prompt),
                       images=ImageCache(model.vision.image_processor), max_images=max_images, source=source)


def load_model(model: str | Path, max_images: int | None = None, device: str | None = None,
               trust_checkpoint: bool = False) -> LoadedModel:
    from dsvl_exp.models.dsvl import DSVLModel
    from dsvl_exp.models.tokenizer import load_tokenizer

    folder, run_dir = resolve_model_dir(model, trust_checkpoint)
    system_prompt, run_max_images = run_settings(run_dir)
    network = DSVLModel.from_pretrained(folder)
    if device is not None:
        network.to(device)
    log.info("loaded %s", folder)
    return wrap_model(network, load_tokenizer(folder), system_prompt, max_images or run_max_images, str(folder))
