"""A web demo of a trained model: a Gradio multimodal chat page, or (`--api`) an
OpenAI-compatible API (`POST /v1/chat/completions`, `GET /v1/models`).

    python -m dsvl_exp.serve MODEL                                 # http://127.0.0.1:7860
    DSVL_SERVE_TOKEN=secret python -m dsvl_exp.serve MODEL --host 0.0.0.0 --port 8080 --greedy
    python -m dsvl_exp.serve MODEL --api --port 8000               # http://127.0.0.1:8000/v1 (also: dsvl-api MODEL)

Beyond 127.0.0.1 a password (`--auth USER:PASS`) or a token (`$DSVL_SERVE_TOKEN`) is required;
uploads are images only, at most `--max-upload-mb` each (inference/access.py).

Upload one or more images with a question (they become the next `### Image k:` numbers, as in
training), ask follow-ups with or without new images, and Clear to start over. Each browser tab
keeps its own conversation; the model is shared and answers one request at a time.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from threading import Thread

from dsvl_exp.console import run_command
from dsvl_exp.inference.access import AccessPolicy, UploadError, access_policy, add_access_arguments
from dsvl_exp.inference.cli import UsageError, add_generation_arguments, generation_settings, model_command_parser
from dsvl_exp.inference.cli import resolve_device

TITLE = "dsvl_exp multimodal chat"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = model_command_parser("serve", __doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=None, help="default 7860 (the page), 8000 (--api)")
    parser.add_argument("--max-images", type=int, default=None, help="images per conversation (default: the run's limit, else 8)")
    parser.add_argument("--api", action="store_true", help="serve the OpenAI-compatible API instead of the page")
    parser.add_argument("--allow-file-dir", metavar="DIR", type=Path, default=None,
                        help="--api: accept file:// image URLs under this folder (default: data URLs only)")
    parser.add_argument("--max-batch", type=int, default=16, help="--api: most requests answered in one batch (default 16)")
    add_access_arguments(parser)
    add_generation_arguments(parser)
    return parser.parse_args(argv)


def empty_state() -> dict:
    return {"rounds": [], "images": []}


def image_messages(first_number: int, files: list[str]) -> list[dict]:
    """Each uploaded image shown under its number, which questions use ("image 2"): a visible
    `Image N` label, then the image."""
    messages = []
    for number, path in enumerate(files, start=first_number):
        messages.append({"role": "user", "content": f"Image {number}"})
        messages.append({"role": "user", "content": {"path": path, "alt_text": f"Image {number}"}})
    return messages


def port_in_use(host: str, port: int) -> bool:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


class GenerationFailed(RuntimeError):
    """The generating thread failed; the page shows why."""


def streamed_answer(session, question: str, files: list[str], tokenizer) -> Iterator[str]:
    """The answer so far, each time the model adds to it, then the whole answer. Generation runs
    in a thread (transformers' streamer is read while `generate` writes it); its failure is raised
    here as GenerationFailed, so the page shows it instead of losing it in the thread."""
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(tokenizer, skip_special_tokens=True)
    result: dict = {}

    def generate() -> None:
        try:
            result["answer"] = session.ask(question, files, streamer=streamer)
        except BaseException as error:
            result["error"] = error
            streamer.end()

    worker = Thread(target=generate, daemon=True)
    worker.start()
    partial = ""
    for text in streamer:
        partial += text
        yield partial
    worker.join()
    if "error" in result:
        raise GenerationFailed(result["error"])
    yield result["answer"]


def build_demo(loaded, settings, policy: AccessPolicy = AccessPolicy()):
    """The Gradio Blocks app around one loaded model (inference.loading.LoadedModel)."""
    import gradio as gr

    from dsvl_exp.data.conversation import Round
    from dsvl_exp.data.errors import DataError
    from dsvl_exp.inference.session import ChatError, ChatSession

    def session_for(state: dict) -> ChatSession:
        return ChatSession(loaded, settings, rounds=[Round(**r) for r in state["rounds"]], images=list(state["images"]))

    def respond(message: dict, chat: list, state: dict):
        question = (message or {}).get("text", "").strip()
        files = [f if isinstance(f, str) else f.get("path") for f in (message or {}).get("files", [])]
        session = session_for(state)
        try:
            for k, path in enumerate(files):  # images only, within the size limit, whatever the browser sent
                policy.check_image(Path(path).read_bytes(), f"upload {k + 1} ({Path(path).name})")
            session.check_round(question, files)
        except (ChatError, DataError, UploadError) as error:
            raise gr.Error(str(error))
        chat = [*(chat or []), *image_messages(session.next_image_number, files), {"role": "user", "content": question},
                {"role": "assistant", "content": ""}]
        yield gr.MultimodalTextbox(value=None, interactive=False), chat, state
        try:
            for answer in streamed_answer(session, question, files, loaded.tokenizer):
                chat[-1] = {"role": "assistant", "content": answer}
                yield gr.MultimodalTextbox(value=None, interactive=False), chat, state
        except GenerationFailed as error:
            raise gr.Error(f"generation failed: {error}")
        state = {"rounds": [vars(r) for r in session.rounds], "images": session.images}
        yield gr.MultimodalTextbox(value=None, interactive=True), chat, state

    # Gradio keeps uploads in its cache folder: delete those older than an hour, checked hourly
    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"## {TITLE}\nModel: `{loaded.source}`. Upload images (up to {loaded.max_images} per "
                    "conversation) and ask about them; follow-up questions keep the conversation.")
        chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", height=420)
        state = gr.State(empty_state())
        box = gr.MultimodalTextbox(file_types=["image"], file_count="multiple", elem_id="question",
                                   placeholder="Attach images and type a question, then press Enter", show_label=False)
        clear = gr.Button("Clear", elem_id="clear")
        box.submit(respond, [box, chatbot, state], [box, chatbot, state])
        clear.click(lambda: (None, [], empty_state()), None, [box, chatbot, state])
        chatbot.clear(empty_state, None, state)  # the chatbot's own trash icon starts over too
    return demo


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local demo
    settings = generation_settings(args)
    policy = access_policy(args)
    if args.allow_file_dir is not None and not args.allow_file_dir.is_dir():
        raise UsageError(f"--allow-file-dir {args.allow_file_dir}: not a folder")
    port = args.port or (8000 if args.api else 7860)
    if port_in_use(args.host, port):  # before the model loads; Gradio's / uvicorn's own error is a traceback
        raise UsageError(f"port {port} on {args.host} is in use: pass another with --port (e.g. --port "
                         f"{port + 1}), or stop the program that holds it")
    import torch

    from dsvl_exp.inference.loading import load_model

    torch.manual_seed(args.seed)
    loaded = load_model(args.model, max_images=args.max_images, device=resolve_device(args.device),
                        trust_checkpoint=args.trust_checkpoint)
    if args.api:
        return serve_api(args, loaded, policy)
    port = args.port or 7860
    demo = build_demo(loaded, settings, policy)
    print(f"serving {loaded.source} on http://{args.host}:{port}", flush=True)
    login = policy.login_ok if policy.required else None
    demo.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=port, share=False,
                                                   show_error=True, inbrowser=False, auth=login,
                                                   max_file_size=policy.max_upload_bytes)
    return 0


def serve_api(args: argparse.Namespace, loaded, policy: AccessPolicy) -> int:
    import uvicorn

    from dsvl_exp.inference.openai_server import build_app

    model_name = Path(args.model).name or str(args.model)
    app = build_app(loaded, policy, model_name, default_max_tokens=args.max_new_tokens,
                    file_root=args.allow_file_dir, max_batch=args.max_batch)
    port = args.port or 8000
    print(f"serving {loaded.source} as model {model_name!r} on http://{args.host}:{port}/v1", flush=True)
    uvicorn.run(app, host=args.host, port=port, log_level="warning")
    return 0


def cli() -> None:
    """The console script (and `python -m`); exit statuses in dsvl_exp/console.py."""
    run_command(main)


def api_cli() -> None:
    """`dsvl-api MODEL ...`: `dsvl-serve MODEL --api ...`."""
    run_command(lambda: main([*sys.argv[1:], "--api"]))


if __name__ == "__main__":
    cli()
