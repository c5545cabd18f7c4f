"""Export a model folder that `DSVLModel.from_pretrained` and transformers' Auto classes
(`trust_remote_code=True`) load offline.

    python -m dsvl_exp.export RUN_DIR --out DIR                 # the run's checkpoints/latest
    python -m dsvl_exp.export OLD_EXPORT --out DIR              # rewrite an older export folder (format 1)
    python -m dsvl_exp.export RUN_DIR/checkpoints/step-00000500 --out DIR --keep-adapters
    python -m dsvl_exp.export --from-dsvl pytorch_model.bin \\
        --vision /models/clip-vit-large-patch14 --decoder /models/Llama-2-7b-hf --tokenizer /models/Llama-2-7b-hf \\
        --projection baseline --attention mmca_legacy --image-order reversed_legacy --out DIR

The first form rebuilds the model from the checkpoint's config.yaml and consolidates its ZeRO
shards (training/exporting.py); the second imports a DeepSpeed-VisualChat checkpoint
(models/reference_import.py). LoRA is merged unless --keep-adapters.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dsvl_exp.console import exit_status
from dsvl_exp.errors import UserError

__all__ = ["export_checkpoint", "main"]

log = logging.getLogger("dsvl_exp.export")
CONFIG_FILE = "config.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dsvl_exp.export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", help="a run directory, one checkpoint folder (step-NNNNNNNN) or an "
                        "older export folder to rewrite")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--keep-adapters", action="store_true", help="write peft adapters beside the base weights")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="read the checkpoint's DeepSpeed pickles unrestricted: they can run any code with your "
                             "account; only for files you or someone you trust wrote (default: weights-only, tensors "
                             "and DeepSpeed's own types)")
    reference = parser.add_argument_group("importing a DeepSpeed-VisualChat checkpoint")
    reference.add_argument("--from-dsvl", metavar="CHECKPOINT", help="the reference's pytorch_model.bin or a .safetensors")
    reference.add_argument("--vision", help="the HF CLIP folder it was trained with (Qwen-VL: its qwen_clip folder)")
    reference.add_argument("--decoder", help="the HF LLaMA folder it was trained with")
    reference.add_argument("--tokenizer", help="tokenizer folder (default: --decoder)")
    reference.add_argument("--projection", choices=["baseline", "vit", "perceiver"], help="its --vis_proj")
    reference.add_argument("--attention", choices=["causal", "mmca_legacy", "mmca"],
                           help="mmca_legacy when it was trained with --enable_mmca_attention, else causal")
    reference.add_argument("--image-order", choices=["reversed_legacy", "forward"], default="reversed_legacy",
                           help="reversed_legacy: how the reference placed several images (its issue #800)")
    args = parser.parse_args(argv)
    if args.from_dsvl:
        absent = [f"--{name}" for name in ("vision", "decoder", "projection", "attention") if getattr(args, name) is None]
        if args.source or absent:
            parser.error(f"--from-dsvl needs {', '.join(absent)}" if absent else "give either SOURCE or --from-dsvl, not both")
    elif not args.source:
        parser.error("give a run directory / checkpoint folder, or --from-dsvl CHECKPOINT")
    return args


def __getattr__(name: str):
    # `from dsvl_exp.export import export_checkpoint` keeps working; `--help` does not import torch.
    if name == "export_checkpoint":
        from dsvl_exp.training.exporting import export_checkpoint

        return export_checkpoint
    raise AttributeError(name)


def check_reference_paths(args: argparse.Namespace) -> None:
    """Missing inputs named before any model is loaded (transformers' own error is a traceback)."""
    for flag, value in (("--from-dsvl", args.from_dsvl), ("--vision", args.vision), ("--decoder", args.decoder),
                        ("--tokenizer", args.tokenizer)):
        if value is not None and not Path(value).exists():
            raise UserError(f"{flag} {value}: no such file or directory (these are local paths: download the "
                            "model first, e.g. with `huggingface-cli download`)")


def import_reference(args: argparse.Namespace) -> None:
    check_reference_paths(args)
    from dsvl_exp.models.pretrained import save_pretrained
    from dsvl_exp.models.reference_import import import_reference_checkpoint
    from dsvl_exp.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer or args.decoder)
    model, dropped = import_reference_checkpoint(args.from_dsvl, args.vision, args.decoder, tokenizer, args.projection,
                                                 args.attention, args.image_order)
    summary = {"imported_from": "DeepSpeed-VisualChat", "checkpoint": str(args.from_dsvl), "vision": args.vision,
               "decoder": args.decoder, "projection": args.projection, "attention": args.attention,
               "image_order": args.image_order, "dropped_keys": dropped}
    save_pretrained(model, args.out, tokenizer=tokenizer, training_summary=summary)


def upgrade_export(source: str, out: str, keep_adapters: bool) -> None:
    """An export folder of an older format (1: no model code in it) rewritten in today's, which
    transformers' Auto classes load too. Weights are copied unchanged."""
    from dsvl_exp.models.config import FORMAT_VERSION, DSVLConfig
    from dsvl_exp.models.dsvl import DSVLModel
    from dsvl_exp.models.pretrained import save_pretrained
    from dsvl_exp.models.tokenizer import load_tokenizer

    folder = Path(source)
    if Path(out).resolve() == folder.resolve():
        raise UserError(f"--out {out} is the folder being upgraded; write the new folder elsewhere")
    old_version = DSVLConfig.load(folder / CONFIG_FILE).format_version
    tokenizer = load_tokenizer(str(folder)) if (folder / "tokenizer_config.json").is_file() else None
    save_pretrained(DSVLModel.from_pretrained(folder), out, tokenizer=tokenizer, keep_adapters=keep_adapters,
                    training_summary={"upgraded_from": str(folder), "format_version": old_version})
    log.info("rewrote %s (format %s) as format %s", folder, old_version, FORMAT_VERSION)


def export(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.from_dsvl:
        import_reference(args)
    elif (Path(args.source) / CONFIG_FILE).is_file():
        upgrade_export(args.source, args.out, args.keep_adapters)
    else:
        from dsvl_exp.training.exporting import export_checkpoint

        export_checkpoint(args.source, args.out, keep_adapters=args.keep_adapters, trust=args.trust_checkpoint)
    print(f"exported to {args.out}: load with DSVLModel.from_pretrained({args.out!r}) or transformers' "
          f"AutoModelForImageTextToText.from_pretrained({args.out!r}, trust_remote_code=True)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The console script: the exit status of dsvl_exp/console.py (user errors 2, one message)."""
    return exit_status(lambda: export(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
