"""What a run ran on: code version, packages, hardware, selected environment variables.

Collected once per run by rank 0 for the manifest; nothing here imports torch at module level."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import dsvl_exp

# The packages whose versions decide a run's numbers; the full list goes to pip-freeze.txt.
KEY_PACKAGES = ("torch", "deepspeed", "transformers", "hydra-core", "omegaconf", "wandb", "peft", "tokenizers",
                "numpy", "optuna", "hydra-optuna-sweeper", "safetensors", "pillow")
# Environment variables worth recording: they change threads, devices, determinism or logging.
ENV_PREFIXES = ("OMP_", "MKL_", "CUDA_", "NCCL_", "TORCH_", "DS_", "WANDB_", "HF_", "TRANSFORMERS_", "DSVL_",
                "CUBLAS_", "PYTHONHASHSEED", "TOKENIZERS_", "SLURM_JOB_", "MASTER_", "WORLD_SIZE")
# Names that look like credentials are never written, whatever their prefix.
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE|SIGNATURE",
                         re.IGNORECASE)
# Inside recorded values: the user:password of a URL (https://user:pw@host, postgres://u:p@db) and
# secret-looking key=value pairs (a DSN's password=..., a query's ?token=...).
URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
SECRET_PAIR = re.compile(r"(?P<key>[\w.-]*(?:KEY|TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|AUTH|SIGNATURE|PWD)[\w.-]*)"
                         r"(?P<sep>\s*[=:]\s*)(?P<value>[^&;,\s'\"/]+)", re.IGNORECASE)
REDACTED = "***"
NOT_A_GIT_CHECKOUT = "not a git checkout"
DIFF_FILE = "uncommitted.diff"
FREEZE_FILE = "pip-freeze.txt"


def package_versions(names=KEY_PACKAGES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def pip_freeze() -> list[str]:
    """`pip freeze`'s content from the installed distributions' metadata: the same name==version
    lines without starting a pip process (~1 s). The first distribution of a name on sys.path is
    the one imported; copies vendored inside other packages (setuptools/_vendor, which joins
    sys.path once setuptools is imported) are not installed packages."""
    lines, seen = [], set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        location = str(getattr(dist, "_path", ""))
        if not name or "_vendor" in location or name.lower() in seen:
            continue
        seen.add(name.lower())
        lines.append(f"{name}=={dist.version}")
    return sorted(lines, key=str.lower)


def read_freeze(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    pairs = (line.split("==", 1) for line in path.read_text().splitlines() if "==" in line)
    return {name.lower(): version for name, version in pairs}


def redact(value: str) -> str:
    """`value` without the credentials it may carry: URL userinfo and secret-looking key=value pairs."""
    value = URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", value)
    return SECRET_PAIR.sub(lambda m: f"{m['key']}{m['sep']}{REDACTED}", value)


def safe_environment(environ=os.environ) -> dict[str, str]:
    """The recorded variables; secret-looking names are left out and credentials inside values redacted."""
    return {name: redact(value) for name, value in sorted(environ.items())
            if name.startswith(ENV_PREFIXES) and not SECRET_NAME.search(name)}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          timeout=30).stdout


def untracked_sha256(top: Path, paths: list[str], max_bytes: int = 10 << 20) -> str:
    """New files are code too, and `git diff HEAD` leaves them out: hash their names and bytes."""
    digest = hashlib.sha256()
    for relative in sorted(paths):
        path = top / relative
        digest.update(relative.encode() + b"\0")
        if path.is_file() and path.stat().st_size <= max_bytes:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def code_files(top: Path, untracked: list[str]) -> list[str]:
    """Untracked paths that may be code: run outputs (outputs/, multirun/, runs/, or any folder
    holding a run or a sweep, e.g. the README's hydra.run.dir=runs/my_run) are not, or two
    identical runs inside a checkout would differ by each other's files."""
    from dsvl_exp.repro.run_dirs import OUTPUT_ROOTS, holds_a_run

    verdicts: dict[Path, bool] = {}

    def inside_a_run(folder: Path) -> bool:
        if folder not in verdicts:
            verdicts[folder] = folder != Path(".") and (holds_a_run(top / folder) or inside_a_run(folder.parent))
        return verdicts[folder]

    return [path for path in untracked
            if Path(path).parts[0] not in OUTPUT_ROOTS and not inside_a_run(Path(path).parent)]


def code_version(run_dir: Path | None = None, include_diff: bool = True) -> dict:
    """The checkout dsvl_exp is imported from: commit, branch, dirty flag; the uncommitted diff
    is saved beside the manifest so the exact code can be rebuilt (it copies whatever the dirty
    tracked files hold, secrets included: `include_diff=False` keeps only its sha256)."""
    package_dir = Path(dsvl_exp.__file__).resolve().parent
    info: dict = {"dsvl_exp_version": dsvl_exp.__version__, "package_dir": str(package_dir)}
    if shutil.which("git") is None:
        info["git"] = NOT_A_GIT_CHECKOUT
        return info
    try:
        top = Path(_git(package_dir, "rev-parse", "--show-toplevel").strip())
        commit = _git(top, "rev-parse", "HEAD").strip()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        info["git"] = NOT_A_GIT_CHECKOUT
        return info
    diff = _git(top, "diff", "HEAD", "--binary")
    untracked = code_files(top, [line for line in _git(top, "ls-files", "--others", "--exclude-standard").splitlines()
                                 if line])
    git = {
        "commit": commit,
        "branch": _git(top, "rev-parse", "--abbrev-ref", "HEAD").strip(),
        "dirty": bool(diff) or bool(untracked),
        "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
        "untracked": untracked,
        "untracked_sha256": untracked_sha256(top, untracked) if untracked else None,
        "diff_file": None,
    }
    if diff and run_dir is not None and include_diff:
        (Path(run_dir) / DIFF_FILE).write_text(diff)
        git["diff_file"] = DIFF_FILE
    info["git"] = git
    return info


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"count": 0}
    info = {
        "count": torch.cuda.device_count(),
        "models": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cuda": torch.version.cuda,
    }
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30).stdout.split()
            info["driver"] = out[0] if out else None
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = None
    return info


def hardware() -> dict:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "hostname": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "gpus": gpus(),
    }


def environment(run_dir: Path | None = None) -> dict:
    info = {
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "packages": package_versions(),
        "pip_freeze_file": None,
        "env": safe_environment(),
    }
    if run_dir is not None:
        (Path(run_dir) / FREEZE_FILE).write_text("\n".join(pip_freeze()) + "\n")
        info["pip_freeze_file"] = FREEZE_FILE
    return info
