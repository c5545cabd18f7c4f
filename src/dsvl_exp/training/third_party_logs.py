"""Library log lines that tell a user nothing they can act on, lowered to warnings.

Called once per process: by the entry point before Hydra starts (sweepers import Optuna there)
and by every rank (training/rank_entry.py)."""

from __future__ import annotations

import importlib.util
import logging

QUIETED = (
    "compilers.C.base",  # setuptools' compiler: DeepSpeed probes for libaio with two gcc command lines per run
    "alembic",  # Optuna's storage layer: seven "setup plugin alembic.autogenerate.*" lines per sweep
)
# huggingface_hub names some loggers by their file's path ("Model weights successfully saved" per export)
QUIETED_MODULE_FILES = ("huggingface_hub.serialization._torch",)


def quiet_library_loggers() -> None:
    names = list(QUIETED)
    for module in QUIETED_MODULE_FILES:
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            spec = None
        if spec is not None and spec.origin:
            names.append(spec.origin)
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
