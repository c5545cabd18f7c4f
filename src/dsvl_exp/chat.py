"""Chat with a trained model in the terminal: multi-round, multi-image.

    python -m dsvl_exp.chat outputs/2026-11-25/10-00-00          # a run directory (or an export folder)
    python -m dsvl_exp.chat MODEL --greedy --max-new-tokens 32
    python -m dsvl_exp.chat MODEL --script rounds.jsonl          # non-interactive, one JSON line per round

Interactive commands: `/image PATH [PATH...]` attaches images to the next question, `/images`
lists the conversation's images with their numbers, `/clear` starts a new conversation,
`/quit` (or Ctrl-D) leaves. Any other line is a question; the answer streams as it is generated.
Lines are edited with readline (arrows, Ctrl-R); the history is kept across sessions in
`$XDG_STATE_HOME/dsvl_exp/chat_history` (default `~/.local/state/...`), never in the run.

Script lines: `{"images": ["a.png"], "question": "What colour is the shape in image 1?"}`
(images optional, paths relative to the script file) or `{"clear": true}`. History continues
from line to line, as in the interactive chat.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from dsvl_exp.console import run_command
from dsvl_exp.files import jsonl_records
from dsvl_exp.inference.cli import UsageError, add_generation_arguments, generation_settings, model_command_parser
from dsvl_exp.inference.cli import resolve_device

HELP = "commands: /image PATH [PATH...]  /images  /clear  /quit   (anything else is a question)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = model_command_parser("chat", __doc__)
    parser.add_argument("--script", metavar="FILE.jsonl", help="answer the rounds of this file, print one JSON line each")
    parser.add_argument("--max-images", type=int, default=None,
                        help="images per conversation (default: the run's data.max_images_per_sample, else 8)")
    add_generation_arguments(parser)
    return parser.parse_args(argv)


def read_script(path: Path) -> list[dict]:
    if not path.is_file():
        raise UsageError(f"--script {path}: file not found")
    lines = []
    for where, record in jsonl_records(path, UsageError):
        if not isinstance(record, dict) or not (record.get("clear") is True or isinstance(record.get("question"), str)):
            raise UsageError(f'{where}: expected {{"question": "...", "images": [...]}} or {{"clear": true}}')
        images = record.get("images", [])
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise UsageError(f"{where}: 'images' must be a list of paths")
        record["images"] = [resolve_path(i, path.parent) for i in images]
        missing = [i for i in record["images"] if not i.startswith("base64:") and not Path(i).is_file()]
        if missing:  # before the model loads, not rounds later
            raise UsageError(f"{where}: image file not found: {missing[0]} (relative paths resolve against the "
                             "script's folder, then the working directory)")
        record["where"] = where
        lines.append(record)
    return lines


def resolve_path(entry: str, base: Path) -> str:
    """Relative to `base` (the script's folder) when the file is there, else as given (the cwd)."""
    candidate = Path(entry).expanduser()
    if entry.startswith("base64:") or candidate.is_absolute() or not (base / candidate).exists():
        return str(candidate) if not entry.startswith("base64:") else entry
    return str(base / candidate)


def run_script(session, records: list[dict]) -> None:
    from dsvl_exp.inference.session import ChatError

    for record in records:
        if record.get("clear"):
            session.clear()
            continue
        first = session.next_image_number
        try:
            answer = session.ask(record["question"], record["images"])
        except ChatError as error:
            raise ChatError(f"{record['where']}: {error}") from None
        print(json.dumps({
            "round": len(session.rounds),
            "question": record["question"],
            "images": record["images"],
            "image_numbers": list(range(first, first + len(record["images"]))),
            "answer": answer,
        }), flush=True)


def interactive(session, out=sys.stdout) -> None:
    from dsvl_exp.inference.line_editing import line_history

    with line_history():
        conversation_loop(session, out)


def image_paths(rest: str) -> list[str]:
    """`/image` arguments, shell-quoted ("my picture.png"); a ChatError for unbalanced quotes."""
    from dsvl_exp.inference.session import ChatError

    try:
        return [str(Path(p).expanduser()) for p in shlex.split(rest)]
    except ValueError as error:  # shlex: "No closing quotation"
        raise ChatError(f"/image {rest}: {str(error).lower()}; quote a path with spaces as \"my file.png\"") from None


def conversation_loop(session, out) -> None:
    from transformers import TextStreamer

    from dsvl_exp.data.errors import DataError
    from dsvl_exp.inference.session import ChatError

    tokenizer = session.loaded.tokenizer
    print(f"model: {session.loaded.source}  (up to {session.loaded.max_images} images per conversation)", file=out)
    print(HELP, file=out, flush=True)
    attached: list[str] = []
    while True:
        try:
            line = input("User: ").strip()
        except EOFError:
            print(file=out)
            return
        if not line:
            continue
        command, _, rest = line.partition(" ")
        if command == "/quit":
            return
        if command == "/clear":
            session.clear()
            attached.clear()
            print("(conversation cleared)", file=out, flush=True)
            continue
        if command == "/images":
            listing = [f"  Image {n}: {p}" for n, p in enumerate(session.images, start=1)]
            listing += [f"  Image {session.next_image_number + k}: {p} (attached to the next question)"
                        for k, p in enumerate(attached)]
            print("\n".join(listing) if listing else "(no images yet)", file=out, flush=True)
            continue
        if command == "/image":
            try:
                paths = image_paths(rest)
                session.check_round("next question", attached + paths)
            except (ChatError, DataError) as error:
                print(f"error: {error}", file=out, flush=True)
                continue
            first = session.next_image_number + len(attached)
            attached += paths
            print(f"(attached as image {', '.join(str(first + k) for k in range(len(paths)))})", file=out, flush=True)
            continue
        if command.startswith("/"):
            print(f"unknown command {command}; {HELP}", file=out, flush=True)
            continue
        print("Assistant: ", end="", file=out, flush=True)
        streamer = TextStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True)
        try:
            session.ask(line, attached, streamer=streamer)
        except (ChatError, DataError) as error:
            print(f"\nerror: {error}", file=out, flush=True)
            continue
        attached = []


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = generation_settings(args)
    records = read_script(Path(args.script)) if args.script else None
    import torch

    from dsvl_exp.inference.loading import load_model
    from dsvl_exp.inference.session import ChatSession

    torch.manual_seed(args.seed)
    loaded = load_model(args.model, max_images=args.max_images, device=resolve_device(args.device),
                        trust_checkpoint=args.trust_checkpoint)
    session = ChatSession(loaded, settings)
    if records is not None:
        run_script(session, records)
    else:
        interactive(session)
    return 0


def cli() -> None:
    """The console script (and `python -m`); exit statuses in dsvl_exp/console.py."""
    run_command(main)


if __name__ == "__main__":
    cli()
