"""A web demo of a trained model: a Gradio multimodal chat page.

    python -m dsvl_exp.serve MODEL                                 # http://127.0.0.1:7860
    python -m dsvl_exp.serve MODEL --host 0.0.0.0 --port 8080 --greedy

Upload one or more images with a question (they become the next `### Image k:` numbers, as in
training), ask follow-ups with or without new images, and Clear to start over. Each browser tab
keeps its own conversation; the model is shared and answers one request at a time.
"""

from __future__ import annotations

import argparse
import os
from threading import Thread

from dsvl_exp.inference.cli import (
    UsageError,
    add_generation_arguments,
    add_model_arguments,
    generation_settings,
    run_cli,
    user_error_types,
)

TITLE = "dsvl_exp multimodal chat"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dsvl_exp.serve", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-images", type=int, default=None, help="images per conversation (default: the run's limit, else 8)")
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


def build_demo(loaded, settings):
    """The Gradio Blocks app around one loaded model (inference.loading.LoadedModel)."""
    import gradio as gr
    from transformers import TextIteratorStreamer

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
            session.check_round(question, files)
        except (ChatError, DataError) as error:
            raise gr.Error(str(error))
        first = session.next_image_number
        chat = list(chat or [])
        chat += image_messages(first, files)
        chat.append({"role": "user", "content": question})
        chat.append({"role": "assistant", "content": ""})
        yield gr.MultimodalTextbox(value=None, interactive=False), chat, state
        streamer = TextIteratorStreamer(loaded.tokenizer, skip_special_tokens=True)
        result: dict = {}

        def generate() -> None:
            try:
                result["answer"] = session.ask(question, files, streamer=streamer)
            except BaseException as error:  # shown in the page, not lost in a thread
                result["error"] = error
                streamer.end()

        worker = Thread(target=generate, daemon=True)
        worker.start()
        partial = ""
        for text in streamer:
            partial += text
            chat[-1] = {"role": "assistant", "content": partial}
            yield gr.MultimodalTextbox(value=None, interactive=False), chat, state
        worker.join()
        if "error" in result:
            raise gr.Error(f"generation failed: {result['error']}")
        chat[-1] = {"role": "assistant", "content": result["answer"]}
        state = {"rounds": [vars(r) for r in session.rounds], "images": session.images}
        yield gr.MultimodalTextbox(value=None, interactive=True), chat, state

    with gr.Blocks(title=TITLE) as demo:
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
    if port_in_use(args.host, args.port):  # before the model loads; Gradio's own error is a traceback
        raise UsageError(f"port {args.port} on {args.host} is in use: pass another with --port (e.g. --port "
                         f"{args.port + 1}), or stop the program that holds it")
    import torch

    from dsvl_exp.inference.loading import load_model

    torch.manual_seed(args.seed)
    loaded = load_model(args.model, max_images=args.max_images, device="cuda" if torch.cuda.is_available() else None)
    demo = build_demo(loaded, settings)
    print(f"serving {loaded.source} on http://{args.host}:{args.port}", flush=True)
    demo.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, share=False,
                                                   show_error=True, inbrowser=False)
    return 0


def cli() -> None:
    """The console script (and `python -m`): user errors exit 2 with one message, no traceback."""
    run_cli(main, user_error_types())


if __name__ == "__main__":
    cli()
