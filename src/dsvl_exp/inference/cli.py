"""Command-line pieces shared by chat, evaluate and serve: model and generation flags, the
device, user errors."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from dsvl_exp.errors import UserError

if TYPE_CHECKING:  # inference.generation imports torch: not before the arguments are parsed
    from dsvl_exp.inference.generation import GenerationSettings


class UsageError(UserError, ValueError):
    """A wrong flag or input file named on the command line."""


def model_command_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """The parser of a command that loads a model (`python -m dsvl_exp.<module>`): the first
    paragraph of its docstring as the description, then the model flags."""
    parser = argparse.ArgumentParser(prog=f"python -m dsvl_exp.{module}", description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    return parser


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="export folder or run directory")
    parser.add_argument("--device", default="auto",
                        help="auto | cpu | cuda | cuda:N (default auto: the GPU when there is one; with several ranks "
                             "each rank takes the GPU of its local rank)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="when MODEL is a checkpoint without export/: read its DeepSpeed pickles unrestricted. "
                             "They can run any code with your account; use only for files you or someone you trust "
                             "wrote (default: weights-only, tensors and DeepSpeed's own types)")


def resolve_device(spec: str, local_rank: int = 0) -> str:
    """The one device rule of chat, evaluate and serve: `auto` is this rank's GPU when CUDA is
    available, else the CPU; `cuda` is this rank's GPU; `cuda:N` and `cpu` are taken as given."""
    import torch

    if spec not in ("auto", "cpu", "cuda") and not (spec.startswith("cuda:") and spec[5:].isdigit()):
        raise UsageError(f"--device {spec}: expected auto, cpu, cuda or cuda:N")
    cuda = torch.cuda.is_available()
    if spec == "cpu" or (spec == "auto" and not cuda):
        return "cpu"
    if not cuda:
        raise UsageError(f"--device {spec}: no GPU is visible here (torch.cuda.is_available() is false); "
                         "use --device cpu or --device auto")
    index = local_rank if spec in ("auto", "cuda") else int(spec[5:])
    if index >= torch.cuda.device_count():
        raise UsageError(f"--device {spec}: this machine has {torch.cuda.device_count()} GPU(s) (cuda:0 to "
                         f"cuda:{torch.cuda.device_count() - 1}); rank {local_rank} cannot take cuda:{index}: start fewer ranks "
                         "or use --device cpu")
    return f"cuda:{index}"


def add_generation_arguments(parser: argparse.ArgumentParser, greedy_default: bool = False) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit in tokens (default 64)")
    group.add_argument("--temperature", type=float, default=0.2, help="sampling temperature; 0 = greedy (default 0.2)")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0: off)")
    group.add_argument("--greedy", action="store_true", default=greedy_default,
                       help="always take the most likely token (deterministic)")
    group.add_argument("--seed", type=int, default=0, help="seed for sampling (default 0)")


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    from dsvl_exp.inference.generation import GenerationSettings

    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens={args.max_new_tokens} must be at least 1")
    if args.temperature < 0:
        raise UsageError(f"--temperature={args.temperature} must be >= 0 (0 means greedy)")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p={args.top_p} must be in (0, 1]")
    return GenerationSettings(max_new_tokens=args.max_new_tokens, greedy=args.greedy,
                              temperature=args.temperature, top_p=args.top_p)
