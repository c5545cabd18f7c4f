"""Reading DeepSpeed checkpoint files without running code from them.

DeepSpeed's checkpoint files (`*model_states.pt`, `*optim_states.pt`) are torch pickles, and both
of its readers (the engine's `load_checkpoint` and `zero_to_fp32`, used by export, chat, evaluate
and serve) call `torch.load(weights_only=False)`: a planted pickle in a colleague's run directory
would run with the reader's account. Inside `checkpoint_loading()` every `torch.load` is forced to
`weights_only=True` (torch's own `TORCH_FORCE_WEIGHTS_ONLY_LOAD` switch: tensors, containers and
numbers only) with the few plain DeepSpeed types its checkpoints hold allowed by name (found with
`torch.serialization.get_unsafe_globals_in_checkpoint` on ZeRO-2, ZeRO-3 and LoRA checkpoints).
A file that needs anything else is refused with a message; `trust=True` (`--trust-checkpoint`,
`resume.trust_checkpoint=true`) restores DeepSpeed's unrestricted loading for files one trusts.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from dsvl_exp.errors import UserError

log = logging.getLogger(__name__)

FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
# Plain data holders DeepSpeed pickles into its optimizer states (no code runs when they are rebuilt).
DEEPSPEED_CHECKPOINT_TYPES = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
TRUST_HINT = ("If you trust whoever could write these files, rerun with --trust-checkpoint (training: "
              "resume.trust_checkpoint=true); loading them then runs any code they hold with your account")


class UntrustedCheckpointError(UserError, ValueError):
    """A checkpoint file that holds more than tensors and DeepSpeed's known types."""


def allowed_types() -> list[type]:
    found = []
    for name in DEEPSPEED_CHECKPOINT_TYPES:
        module, _, attribute = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), attribute))
        except (ImportError, AttributeError):  # another DeepSpeed version: its checkpoints lack it too
            continue
    return found


def unpickler_reason(message: str) -> str:
    """The line of torch's long weights-only message that names what was refused."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    named = [line for line in lines if "WeightsUnpickler error" in line or "Unsupported global" in line]
    return (named or lines or ["unreadable pickle"])[0].removeprefix("WeightsUnpickler error: ").split(". ")[0]


@contextmanager
def checkpoint_loading(trust: bool = False, source: object = "") -> Iterator[None]:
    """Every torch.load inside is weights-only with DeepSpeed's types allowed; `trust`: unrestricted."""
    if trust:
        log.warning("loading %s with --trust-checkpoint: its pickles may run code", source or "the checkpoint")
        yield
        return
    before = os.environ.get(FORCE_WEIGHTS_ONLY)
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        with torch.serialization.safe_globals(allowed_types()):
            yield
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise  # a damaged file, not a refused object: the caller's error handling applies
        reason = unpickler_reason(str(error))
        raise UntrustedCheckpointError(
            f"refused to load the checkpoint {source}: a file in it holds objects other than tensors and "
            f"DeepSpeed's known types, and loading it could run code ({reason}). {TRUST_HINT}") from None
    finally:
        if before is None:
            os.environ.pop(FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[FORCE_WEIGHTS_ONLY] = before
