"""Throughput of the OpenAI-compatible API at 1, 4 and 16 concurrent clients, and whether the
concurrent (batched) greedy answers equal the sequential ones. Start the server first:

    python -m dsvl_exp.serve MODEL --api --port 8000 --greedy &
    python scripts/bench_api.py --base-url http://127.0.0.1:8000/v1 --pictures folder/ --requests 48

Uses the official `openai` client. Timings need an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import base64
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_common import print_machine_header

QUESTIONS = ["What colour is the shape in image 1?", "What shape is in image 1?", "Describe image 1."]


def requests_for(pictures: list[Path], count: int) -> list[list[dict]]:
    messages = []
    for k in range(count):
        picture = pictures[k % len(pictures)]
        url = "data:image/png;base64," + base64.b64encode(picture.read_bytes()).decode()
        messages.append([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": QUESTIONS[k % len(QUESTIONS)]}]}])
    return messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--pictures", type=Path, required=True, help="a folder of .png images")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    print_machine_header()
    import openai

    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=600)
    model = client.models.list().data[0].id
    conversations = requests_for(sorted(args.pictures.glob("*.png")), args.requests)

    def ask(messages):
        response = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                                  max_tokens=args.max_tokens)
        return response.choices[0].message.content, response.usage.completion_tokens

    reference = None
    for clients in args.clients:
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(ask, conversations))
        elapsed = time.perf_counter() - started
        answers = [text for text, _ in results]
        reference = reference or answers
        tokens = sum(n for _, n in results)
        print(f"{clients:>3} clients: {len(results) / elapsed:6.2f} requests/s, {tokens / elapsed:7.1f} tokens/s, "
              f"answers equal to 1 client: {answers == reference}", flush=True)


if __name__ == "__main__":
    main()
