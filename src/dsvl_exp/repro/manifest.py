"""manifest.json: everything needed to review or repeat a run, in its run directory.

Written by rank 0 in three steps, each merged into the same file (written atomically):

    begin_manifest(run_dir, config, hydra_info)       # the Hydra task, before any rank starts
    record_setup(run_dir, ...)                        # the recipe, once the engine exists
    record_end(run_dir, summary, monitor, status, reason)  # repro/run_end.py, however the run ended

Sections: status, command, hydra (overrides, group choices), config (resolved), code, environment,
hardware, seeds, derived (world size, batch sizes, the DeepSpeed JSON after its defaults,
parameters, visual tokens per image), data_fingerprint, outcome.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

from dsvl_exp.files import write_atomically
from dsvl_exp.process import peak_rss_bytes
from dsvl_exp.repro import environment as env_info
from dsvl_exp.repro.metrics import best_metrics, read_metrics

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_manifest(run_dir: Path) -> dict:
    path = Path(run_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def write_manifest(run_dir: Path, manifest: dict) -> Path:
    return write_atomically(Path(run_dir) / MANIFEST, json.dumps(manifest, indent=1, default=jsonable))


def update_manifest(run_dir: Path, **sections) -> dict:
    manifest = read_manifest(run_dir)
    manifest.update(sections)
    write_manifest(run_dir, manifest)
    return manifest


def jsonable(value):
    """DeepSpeed's config holds pydantic models, enums and dtypes; write them as plain values."""
    if hasattr(value, "model_dump"):
        try:
            return value.model_dump(mode="json")
        except Exception:  # noqa: BLE001 - a field pydantic cannot serialise: fall back to its text
            return str(value)
    if isinstance(value, Enum):
        return value.value if isinstance(value.value, (str, int, float, bool)) else str(value.value)
    if isinstance(value, (set, tuple)):
        return list(value)
    if hasattr(value, "__dict__") and not callable(value):  # a plain settings object
        return {k: v for k, v in vars(value).items() if not k.startswith("_")}
    return re.sub(r" at 0x[0-9a-f]+", "", str(value))  # an address differs in every process


def seeds_and_determinism(config: dict) -> dict:
    import torch

    synthetic = (config.get("data") or {}).get("synthetic") or {}
    return {
        "seed": config.get("seed"),
        "data.synthetic.seed": synthetic.get("seed"),
        "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED"),
        "torch_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def begin_manifest(run_dir: Path, config: dict, hydra_info: dict | None = None, argv: list[str] | None = None) -> dict:
    """The static part, known before the ranks start: what was asked and on what it runs.
    Credentials inside the command's arguments are redacted (environment.redact); the diff of
    uncommitted code is written unless the config's manifest.include_diff is false."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "status": "running",
        "error": None,
        "run_dir": str(run_dir.resolve()),
        "started_at": now_iso(),
        "started_at_unix": time.time(),
        "finished_at": None,
        "command": [env_info.redact(arg) for arg in (sys.argv if argv is None else argv)],
        "cwd": os.getcwd(),
        "hydra": hydra_info or {},
        "config": config,
        "code": env_info.code_version(run_dir, include_diff=(config.get("manifest") or {}).get("include_diff", True)),
        "environment": env_info.environment(run_dir),
        "hardware": env_info.hardware(),
        "seeds": seeds_and_determinism(config),
        "derived": None,
        "data_fingerprint": None,
        "outcome": None,
    }
    write_manifest(run_dir, manifest)
    return manifest


def deepspeed_final_config(engine) -> dict:
    """The engine's parsed config: the JSON we passed plus every default DeepSpeed filled in."""
    parsed = getattr(engine, "_config", None)
    if parsed is None:
        return {}
    skip = {"_param_dict", "mesh_device"}
    try:
        return json.loads(json.dumps({k: v for k, v in vars(parsed).items() if k not in skip}, default=jsonable))
    except (ValueError, TypeError) as error:  # a circular or odd object in a future DeepSpeed
        return {"unavailable": f"{type(error).__name__}: {error}"}


def record_setup(run_dir: Path, *, config: dict, engine, ds_config: dict, world_size: int, grad_accum: int,
                 parameter_counts: dict, tokens_per_image: int, data_fingerprint: dict | None) -> dict:
    """Values derived once model, data and engine exist (rank 0)."""
    if not read_manifest(run_dir):  # run without the Hydra task (tests, notebooks)
        begin_manifest(run_dir, config)
    micro = ds_config["train_micro_batch_size_per_gpu"]
    derived = {
        "world_size": world_size,
        "micro_batch_size": micro,
        "grad_accum": grad_accum,
        "global_batch_size": micro * grad_accum * world_size,
        "precision": config["train"]["precision"],
        "zero_stage": ds_config["zero_optimization"]["stage"],
        "deepspeed_config": ds_config,
        "deepspeed_config_final": deepspeed_final_config(engine),
        "parameters": parameter_counts,
        "parameters_total": sum(entry["total"] for entry in parameter_counts.values()),
        "parameters_trainable": sum(entry["trainable"] for entry in parameter_counts.values()),
        "tokens_per_image": tokens_per_image,
    }
    # the config as the ranks got it (the task fills in W&B names after the manifest began)
    return update_manifest(run_dir, config=config, derived=derived, data_fingerprint=data_fingerprint)


def peak_memory() -> dict:
    import torch

    memory = {"peak_rss_bytes_rank0": peak_rss_bytes()}
    if torch.cuda.is_available():
        memory["peak_cuda_allocated_bytes_rank0"] = torch.cuda.max_memory_allocated()
    return memory


def outcome_from_metrics(run_dir: Path, monitor: str | None, summary: dict | None = None) -> dict:
    records = read_metrics(run_dir)
    speeds = [r["perf/tokens_per_s"] for r in records if isinstance(r.get("perf/tokens_per_s"), (int, float))]
    final = {k: v for k, v in (summary or {}).items() if not k.startswith("perf/")}
    if not final:  # a failed run: its last logged values
        for record in records:
            final.update({k: v for k, v in record.items() if k not in ("time",) and not k.startswith("perf/")})
    return {
        "final": final,
        "best": best_metrics(records),
        "monitor": monitor,
        "monitor_value": final.get(monitor) if monitor else None,
        "tokens_per_s_mean": sum(speeds) / len(speeds) if speeds else None,
        **peak_memory(),
    }


def _finish(run_dir: Path, status: str, reason: str | None, outcome: dict, error: str | None = None) -> dict:
    manifest = read_manifest(run_dir)
    started = manifest.get("started_at_unix")
    outcome["wall_time_s"] = round(time.time() - started, 3) if started else None
    outcome["exit_status"] = status
    return update_manifest(run_dir, status=status, reason=reason, error=error, finished_at=now_iso(), outcome=outcome)


def record_end(run_dir: Path, summary: dict, monitor: str | None, status: str = "completed",
               reason: str | None = None) -> dict:
    """Final and best metrics, wall time, speed, peak memory; the status (completed, stopped when a
    signal ended the run early at a checkpoint, failed / interrupted) and its reason (rank 0).
    A failure's reason is also its `error`."""
    failed = status in ("failed", "interrupted")
    return _finish(run_dir, status, reason, outcome_from_metrics(run_dir, monitor, summary),
                   error=reason if failed else None)


def error_line(error: BaseException) -> str:
    """`Type: first line`; for ranks started by torch elastic, the failing rank's own error."""
    if isinstance(error, SystemExit) and error.__context__ is not None:  # a user error turned into an exit
        error = error.__context__
    if hasattr(error, "get_first_failure"):  # torch.distributed.elastic ChildFailedError
        rank, failure = error.get_first_failure()
        message = failure.message.get("message", "") if isinstance(failure.message, dict) else str(failure.message)
        if message:
            return f"rank {rank}: {message.strip().splitlines()[0]}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}".strip()
