"""`python -m dsvl_exp.train --help`, answered from the packaged config files.

Hydra's own --help lists the config groups by composing a copy of every schema in the ConfigStore
once per group option (several seconds); reading the folder names gives the same list at once.
Hydra's flags stay available: --hydra-help, --cfg job, --info, -m.
"""

from __future__ import annotations

from pathlib import Path


def config_groups(config_dir: str) -> dict[str, list[str]]:
    """Group name -> its options, from conf/<group>/<option>.yaml (Hydra's own groups left out)."""
    groups = {}
    for folder in sorted(Path(config_dir).iterdir()):
        if folder.is_dir() and folder.name != "hydra":
            groups[folder.name] = sorted(p.stem for p in folder.glob("*.yaml"))
    return groups


def print_help(usage: str, config_dir: str) -> None:
    print(usage.strip())
    print("\nConfig groups (choose one with group=option):")
    for group, options in config_groups(config_dir).items():
        print(f"  {group}: {', '.join(options)}")
    print("\nEvery key can be set as key=value (see docs/guide/configuration.md). Show the composed config "
          "with --cfg job; Hydra's own flags with --hydra-help.")
