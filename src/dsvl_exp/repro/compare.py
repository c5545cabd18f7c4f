"""Compare two runs from their manifests and metrics: what differs, and does it matter.

Each difference is one of
- meaningful: it can change the numbers (config values, code, packages, hardware, seeds, data, outcomes);
- volatile: it cannot (paths, hostnames, W&B labels, environment variables, the branch name);
per-run bookkeeping (timestamps, run directories, the command line, wall time, speed) is reported
as information only. The verdict is `identical`, `volatile` (differs only in volatile fields) or
`differs` (differs in meaning).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dsvl_exp.config import meaning
from dsvl_exp.config.legacy_keys import upgrade, upgrade_overrides
from dsvl_exp.config.meaning import ABSENT, flatten, same_value
from dsvl_exp.errors import UserError
from dsvl_exp.repro.environment import FREEZE_FILE, read_freeze
from dsvl_exp.repro.manifest import MANIFEST, read_manifest
from dsvl_exp.repro.metrics import read_metrics, series

IDENTICAL, VOLATILE, DIFFERS = "identical", "volatile", "differs"
VERDICT_TEXT = {IDENTICAL: "identical", VOLATILE: "differs only in volatile fields", DIFFERS: "differs in meaning"}
SECTIONS = ("status", "group choices", "overrides", "config", "derived", "code", "environment", "hardware", "seeds",
            "data", "outcomes")
# W&B labels the entry point derives from the overrides and the sweep: bookkeeping, shown only.
LABEL_CONFIG_KEYS = ("logger.run_name", "logger.wandb.name", "logger.wandb.group", "logger.wandb.tags")
VOLATILE_HARDWARE_KEYS = ("hostname",)
# Numbers that describe how fast a run went, not what it computed.
PERF_PREFIXES = ("perf/",)
DEFAULT_TOLERANCE = 1e-9


class RunError(UserError):
    """A path that is not a run directory (no manifest.json), with the fix."""


@dataclass
class Difference:
    section: str
    key: str
    a: Any
    b: Any
    kind: str = "meaningful"  # meaningful | volatile | info
    note: str = ""


@dataclass
class Comparison:
    a: str
    b: str
    verdict: str
    differences: list[Difference] = field(default_factory=list)
    divergence: dict | None = None  # first step where a loss curve differs beyond the tolerance

    @property
    def verdict_text(self) -> str:
        return VERDICT_TEXT[self.verdict]

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "verdict": self.verdict, "verdict_text": self.verdict_text,
                "differences": [asdict(d) for d in self.differences], "divergence": self.divergence}


@dataclass
class Run:
    path: Path
    manifest: dict
    metrics: list[dict]


def load_run(path: Path) -> Run:
    path = Path(path)
    manifest = read_manifest(path)
    if not manifest:
        raise RunError(f"{path}: no {MANIFEST} here; pass a run directory written by python -m dsvl_exp.train "
                       "(one with manifest.json), or a multirun directory alone to compare its jobs")
    return Run(path, manifest, read_metrics(path))


def dict_differences(section: str, a: dict, b: dict, volatile=lambda key: False, prefix: str = "") -> list[Difference]:
    flat_a, flat_b = flatten(a or {}), flatten(b or {})
    out = []
    for key in sorted(set(flat_a) | set(flat_b)):
        value_a, value_b = flat_a.get(key, ABSENT), flat_b.get(key, ABSENT)
        if not same_value(value_a, value_b):
            out.append(Difference(section, prefix + key, value_a, value_b, "volatile" if volatile(key) else "meaningful"))
    return out


def compare_overrides(a: list[str], b: list[str]) -> list[Difference]:
    def as_dict(overrides: list[str]) -> dict[str, str]:
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in overrides)

    return dict_differences("overrides", as_dict(a or []), as_dict(b or []),
                            lambda key: meaning.volatile(key.lstrip("+~")))


def compare_code(a: dict, b: dict) -> list[Difference]:
    volatile = lambda key: key in ("package_dir", "git.branch", "git.diff_file")  # noqa: E731
    return dict_differences("code", a, b, volatile)


def compare_environment(run_a: Run, run_b: Run) -> list[Difference]:
    env_a, env_b = run_a.manifest.get("environment") or {}, run_b.manifest.get("environment") or {}
    out = dict_differences("environment", {"python": env_a.get("python")}, {"python": env_b.get("python")})
    freeze_a, freeze_b = read_freeze(run_a.path / FREEZE_FILE), read_freeze(run_b.path / FREEZE_FILE)
    if not (freeze_a and freeze_b):  # an older manifest without the freeze file: the key packages
        freeze_a, freeze_b = env_a.get("packages") or {}, env_b.get("packages") or {}
    out += dict_differences("environment", freeze_a, freeze_b, prefix="package ")
    out += dict_differences("environment", {"python_executable": env_a.get("python_executable")},
                            {"python_executable": env_b.get("python_executable")}, lambda key: True)
    out += dict_differences("environment", env_a.get("env") or {}, env_b.get("env") or {}, lambda key: True, "env ")
    return out


def fingerprint_content(fingerprint: dict | None) -> dict:
    """The fingerprint without file locations: annotation files by content hash."""
    fingerprint = dict(fingerprint or {})
    fingerprint.pop("sha256", None)
    fingerprint["annotation_files"] = sorted((fingerprint.get("annotation_files") or {}).values())
    return fingerprint


def compare_data(a: dict | None, b: dict | None) -> list[Difference]:
    content_a, content_b = fingerprint_content(a), fingerprint_content(b)
    same_files = content_a.get("annotation_files") == content_b.get("annotation_files")

    # The image lists hash the image paths: moved data (a different cache directory) with the
    # same annotation files changes only where the images are.
    def volatile(key: str) -> bool:
        return same_files and key in ("train_images", "eval_images")

    out = dict_differences("data", content_a, content_b, volatile)
    paths_a, paths_b = sorted((a or {}).get("annotation_files") or {}), sorted((b or {}).get("annotation_files") or {})
    if paths_a != paths_b:
        out.append(Difference("data", "annotation file paths", paths_a, paths_b, "volatile"))
    return out


def curve_divergence(a: list[dict], b: list[dict], tolerance: float) -> dict | None:
    for key in ("train/loss", "eval/loss"):
        points_b = dict(series(b, key))
        for step, value in series(a, key):
            if step in points_b and not same_value(value, points_b[step], tolerance):
                return {"metric": key, "step": step, "a": value, "b": points_b[step]}
    return None


def compare_outcomes(run_a: Run, run_b: Run, tolerance: float) -> list[Difference]:
    out_a, out_b = run_a.manifest.get("outcome") or {}, run_b.manifest.get("outcome") or {}
    final_a, final_b = out_a.get("final") or {}, out_b.get("final") or {}
    out = []
    for key in sorted(set(final_a) | set(final_b)):
        if key.startswith(PERF_PREFIXES):
            continue
        value_a, value_b = final_a.get(key, ABSENT), final_b.get(key, ABSENT)
        if not same_value(value_a, value_b, tolerance):
            note = ""
            if all(isinstance(v, (int, float)) for v in (value_a, value_b)):
                note = f"{value_b - value_a:+.6g}"
            out.append(Difference("outcomes", f"final {key}", value_a, value_b, "meaningful", note))
    for key in ("wall_time_s", "tokens_per_s_mean", "peak_rss_bytes_rank0"):
        value_a, value_b = out_a.get(key), out_b.get(key)
        if value_a is not None and value_b is not None and value_a != value_b:
            note = f"{(value_b - value_a) / value_a:+.1%}" if value_a else ""
            out.append(Difference("outcomes", key, value_a, value_b, "info", note))
    return out


def compare_runs(run_a: Run, run_b: Run, tolerance: float = DEFAULT_TOLERANCE) -> Comparison:
    a, b = run_a.manifest, run_b.manifest
    hydra_a, hydra_b = a.get("hydra") or {}, b.get("hydra") or {}
    differences = dict_differences("status", {"status": a.get("status"), "error": a.get("error")},
                                   {"status": b.get("status"), "error": b.get("error")})
    differences += dict_differences("group choices", hydra_a.get("choices") or {}, hydra_b.get("choices") or {},
                                    lambda key: key.startswith("hydra/"))  # how jobs were launched
    # an old run's manifest in today's names (config/legacy_keys.py): a rename alone is no difference
    differences += compare_overrides(upgrade_overrides(hydra_a.get("overrides") or []),
                                     upgrade_overrides(hydra_b.get("overrides") or []))
    differences += [
        Difference(d.section, d.key, d.a, d.b, "info") if d.key.startswith(LABEL_CONFIG_KEYS) else d
        for d in dict_differences("config", upgrade(a.get("config") or {}), upgrade(b.get("config") or {}),
                                  meaning.volatile)
    ]
    differences += dict_differences("derived", a.get("derived") or {}, b.get("derived") or {})
    differences += compare_code(a.get("code") or {}, b.get("code") or {})
    differences += compare_environment(run_a, run_b)
    differences += dict_differences("hardware", a.get("hardware") or {}, b.get("hardware") or {},
                                    lambda key: key in VOLATILE_HARDWARE_KEYS)
    differences += dict_differences("seeds", a.get("seeds") or {}, b.get("seeds") or {})
    differences += compare_data(a.get("data_fingerprint"), b.get("data_fingerprint"))
    differences += compare_outcomes(run_a, run_b, tolerance)
    divergence = curve_divergence(run_a.metrics, run_b.metrics, tolerance)
    kinds = {d.kind for d in differences}
    verdict = DIFFERS if "meaningful" in kinds or divergence else VOLATILE if "volatile" in kinds else IDENTICAL
    return Comparison(str(run_a.path), str(run_b.path), verdict, differences, divergence)


def multirun_jobs(sweep_dir: Path) -> list[Path]:
    """Job directories of a multirun, in job order (Hydra names them 0, 1, ...)."""
    jobs = [p for p in Path(sweep_dir).iterdir() if p.is_dir() and (p / MANIFEST).is_file()]
    if any(p.name.isdigit() for p in jobs):  # Hydra's numbered jobs; not e.g. a reproduction put there
        jobs = [p for p in jobs if p.name.isdigit()]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
