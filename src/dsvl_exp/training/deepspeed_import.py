"""`import deepspeed` without the MLflow import it does not need.

`import deepspeed` loads its autotuner, whose module does `try: import mlflow` at import time to
log autotuning trials (a feature this project never runs: it builds its engine with
`deepspeed.initialize`). Importing MLflow pulls in pandas, FastAPI and its GenAI stack: 1.1 s of
deepspeed's 1.37 s import here (`python -X importtime`), paid by every training run even when
`logger.mlflow` is null. While deepspeed imports, `sys.modules["mlflow"]` is None, so that one
`import mlflow` fails fast and the autotuner keeps `has_mlflow = False`; afterwards the entry is
removed, and this project's own MLflow tracker (training/trackers.py) imports the real package.
DeepSpeed has no switch for this; hence the hand-written guard.
"""

from __future__ import annotations

import sys


def import_deepspeed():
    """The `deepspeed` module, imported once (see the module docstring)."""
    if "deepspeed" in sys.modules:
        return sys.modules["deepspeed"]
    import transformers  # noqa: F401  (its own optional-package checks run with mlflow visible)

    blocked = "mlflow" not in sys.modules
    if blocked:
        sys.modules["mlflow"] = None  # `import mlflow` raises ImportError while this holds
    try:
        import deepspeed
    finally:
        if blocked and sys.modules.get("mlflow", ...) is None:
            del sys.modules["mlflow"]
    return deepspeed
