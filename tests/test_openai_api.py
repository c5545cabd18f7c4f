"""The OpenAI-compatible API (`serve --api`), driven by the official `openai` client against a
server on 127.0.0.1, plus the request rules and the access rules it shares with the page."""

from __future__ import annotations

import argparse
import base64
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dsvl_exp.inference.access import AccessPolicy, UploadError, access_policy
from dsvl_exp.inference.cli import UsageError
from dsvl_exp.inference.openai_messages import RequestError, parse_request
from helpers import start_cli, subprocess_env
from inference_fixtures import chat_script_answers

TOKEN = "s3cret-token"
PNG_1PX = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def args(host="127.0.0.1", auth=None, max_upload_mb=10.0):
    return argparse.Namespace(host=host, auth=auth, token_env="DSVL_SERVE_TOKEN", max_upload_mb=max_upload_mb)


def test_binding_beyond_loopback_needs_credentials():
    with pytest.raises(UsageError, match="--auth USER:PASS"):
        access_policy(args(host="0.0.0.0"), environ={})
    assert access_policy(args(host="0.0.0.0"), environ={"DSVL_SERVE_TOKEN": "t"}).token == "t"
    assert access_policy(args(host="0.0.0.0", auth="ann:pw"), environ={}).login_ok("ann", "pw")
    assert not access_policy(args(), environ={}).required  # loopback: open unless set
    with pytest.raises(UsageError, match="USER:PASS"):
        access_policy(args(auth="ann"), environ={})


def test_credentials_and_upload_rules():
    policy = AccessPolicy(user="ann", password="pw", token="tok", max_upload_bytes=1000)
    basic = base64.b64encode(b"ann:pw").decode()
    assert policy.header_ok("Bearer tok") and policy.header_ok(f"Basic {basic}")
    assert not policy.header_ok(None) and not policy.header_ok("Bearer nope") and not policy.header_ok("Basic !!")
    assert policy.login_ok("anyone", "tok") and not policy.login_ok("ann", "tok2")
    policy.check_image(PNG_1PX, "a pixel")
    with pytest.raises(UploadError, match="not an image"):
        policy.check_image(b"%PDF-1.4 not a picture", "doc.pdf")
    with pytest.raises(UploadError, match="limit is") as error:
        policy.check_image(PNG_1PX + b"\0" * 2000, "big.png")
    assert error.value.too_large


def test_a_request_becomes_rounds_with_their_images(tmp_path):
    (tmp_path / "a.png").write_bytes(PNG_1PX)
    body = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [image_part("data:image/png;base64," + base64.b64encode(PNG_1PX).decode()),
                                     {"type": "text", "text": "What is in image 1?"}]},
        {"role": "assistant", "content": "A dot."},
        {"role": "user", "content": [image_part((tmp_path / "a.png").as_uri()), {"type": "text", "text": "And 2?"}]},
    ], "temperature": 0, "max_tokens": 5, "stop": "\n", "seed": 3}
    request = parse_request(body, AccessPolicy(), tmp_path, max_images=8, default_max_tokens=64)
    conversation = request.conversation
    assert [(r.question, r.answer, r.num_images) for r in conversation.rounds] == [("What is in image 1?", "A dot.", 1),
                                                                                ("And 2?", "", 1)]
    assert conversation.images[0].startswith("base64:") and conversation.images[1] == str(tmp_path / "a.png")
    assert request.system_prompt == "Be brief." and request.stop == ["\n"] and request.seed == 3
    assert request.settings.greedy and request.settings.max_new_tokens == 5


@pytest.mark.parametrize("change, status, param", [
    ({"n": 2}, 400, "n"),
    ({"temperature": 3}, 400, "temperature"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": [image_part("https://example.com/x.png")]}]}, 400, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [image_part("file:///etc/passwd"), {"type": "text", "text": "?"}]}]},
     400, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [image_part("data:image/png;base64," + "A" * 3000),
                                                {"type": "text", "text": "?"}]}]}, 413, "messages[0].content[0]"),
])
def test_bad_requests_name_the_field(tmp_path, change, status, param):
    body = {"messages": [{"role": "user", "content": "Hi?"}], **change}
    with pytest.raises(RequestError) as error:
        parse_request(body, AccessPolicy(max_upload_bytes=1000), tmp_path, max_images=8, default_max_tokens=64)
    assert (error.value.status, error.value.param) == (status, param)


def free_port() -> int:
    from dsvl_exp.training.distributed import free_port as pick

    return pick()


@pytest.fixture()
def api_server(trained_run, shape_pictures, tmp_path):
    port = free_port()
    log = open(tmp_path / "api.log", "w")
    picture_dir = shape_pictures["circle"].parent
    process = start_cli(
        [sys.executable, "-m", "dsvl_exp.serve", str(trained_run), "--api", "--host", "127.0.0.1", "--port", str(port),
         "--greedy", "--max-new-tokens", "8", "--allow-file-dir", str(picture_dir), "--max-upload-mb", "0.05"],
        cwd=tmp_path, env=subprocess_env(DSVL_SERVE_TOKEN=TOKEN), stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url + "/models", timeout=2)
        except urllib.error.HTTPError as error:
            if error.code == 401:  # up, and asking for the token
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the API did not come up:\n{(tmp_path / 'api.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)
    log.close()


def two_rounds(pictures: dict, first_answer: str) -> list[dict]:
    return [
        {"role": "user", "content": [image_part(data_url(pictures["circle"])), image_part(data_url(pictures["square"])),
                                     {"type": "text", "text": "What colour is the shape in image 1?"}]},
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": [image_part(pictures["triangle"].as_uri()),
                                     {"type": "text", "text": "What shape is in image 3?"}]},
    ]


@pytest.mark.slow
def test_openai_client_answers_as_chat_script_does(api_server, trained_run, shape_pictures, tmp_path):
    import openai

    pictures = shape_pictures
    expected = chat_script_answers(trained_run, [
        {"images": [str(pictures["circle"]), str(pictures["square"])], "question": "What colour is the shape in image 1?"},
        {"images": [str(pictures["triangle"])], "question": "What shape is in image 3?"},
    ], tmp_path)
    client = openai.OpenAI(base_url=api_server, api_key=TOKEN, max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == [trained_run.name]

    first = client.chat.completions.create(model=trained_run.name, messages=two_rounds(pictures, "")[:1],
                                           temperature=0, max_tokens=8)
    assert first.choices[0].message.content == expected[0]["answer"]
    messages = two_rounds(pictures, first.choices[0].message.content)
    second = client.chat.completions.create(model=trained_run.name, messages=messages, temperature=0, max_tokens=8)
    assert second.choices[0].message.content == expected[1]["answer"]
    assert second.usage.prompt_tokens > first.usage.prompt_tokens > 0
    assert second.usage.completion_tokens <= 8 and second.choices[0].finish_reason in ("stop", "length")
    assert second.usage.total_tokens == second.usage.prompt_tokens + second.usage.completion_tokens

    stream = client.chat.completions.create(model=trained_run.name, messages=messages, temperature=0, max_tokens=8,
                                            stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == expected[1]["answer"]

    # OpenAI-style errors: 401 without the token, 400 for a bad field, 413 for an image over the limit
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=api_server, api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="only n=1"):
        client.chat.completions.create(model=trained_run.name, messages=messages, n=2)
    big = tmp_path / "big.png"
    from PIL import Image

    Image.effect_noise((256, 256), 64).convert("RGB").save(big)  # ~190 KB of noise, limit 0.05 MB
    with pytest.raises(openai.APIStatusError) as error:
        client.chat.completions.create(model=trained_run.name, messages=[
            {"role": "user", "content": [image_part(data_url(big)), {"type": "text", "text": "What shape?"}]}])
    assert error.value.status_code == 413 and error.value.body["code"] == "request_too_large"


@pytest.mark.slow
def test_batched_answers_equal_sequential_greedy_answers(trained_run, shape_pictures):
    """In-process, so the batches that ran can be seen: requests that wait together share a decode."""
    from dsvl_exp.inference.batching import Batcher
    from dsvl_exp.inference.loading import load_model

    loaded = load_model(trained_run)
    questions = ["What colour is the shape in image 1?", "What shape is in image 1?", "How many images are there?"]
    bodies = [{"messages": [{"role": "user", "content": [image_part(data_url(picture)), {"type": "text", "text": q}]}],
               "temperature": 0, "max_tokens": 4 + k % 3}
              for k, (picture, q) in enumerate((p, q) for p in shape_pictures.values() for q in questions)]
    requests = [parse_request(b, AccessPolicy(), None, 8, 8) for b in bodies]
    batcher = Batcher(loaded, max_batch=16)
    sequential = [batcher.submit(r).future.result(timeout=120).text for r in requests]
    assert set(batcher.batch_sizes) == {1}
    with ThreadPoolExecutor(len(requests)) as pool:
        jobs = list(pool.map(batcher.submit, requests))
    together = [job.future.result(timeout=120).text for job in jobs]
    assert together == sequential
    assert max(batcher.batch_sizes[len(requests):]) > 1


@pytest.mark.parametrize("mode", [[], ["--api"]])
def test_serve_refuses_to_listen_beyond_loopback_without_credentials(tmp_path, mode):
    from inference_fixtures import run_module

    result = run_module("dsvl_exp.serve", tmp_path, "--host", "0.0.0.0", *mode, cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--host 0.0.0.0 lets other machines connect" in result.stderr and "DSVL_SERVE_TOKEN" in result.stderr


@pytest.mark.slow
def test_the_page_asks_for_the_token_and_limits_uploads(trained_run, tmp_path):
    """`serve` (the Gradio page) under the same rules: a login before anything, uploads capped."""
    import httpx

    port = free_port()
    log = open(tmp_path / "page.log", "w")
    process = start_cli(
        [sys.executable, "-m", "dsvl_exp.serve", str(trained_run), "--host", "127.0.0.1", "--port", str(port),
         "--max-upload-mb", "0.01"],
        cwd=tmp_path, env=subprocess_env(DSVL_SERVE_TOKEN=TOKEN), stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            deadline = time.monotonic() + 180
            while True:
                try:
                    client.get("/")
                    break
                except httpx.TransportError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError((tmp_path / "page.log").read_text()[-3000:]) from None
                    time.sleep(0.5)
            assert client.get("/config").status_code == 401
            assert client.post("/login", data={"username": "ann", "password": "wrong"}).status_code == 400
            assert client.post("/login", data={"username": "ann", "password": TOKEN}).status_code == 200
            assert client.get("/config").status_code == 200  # the login cookie
            upload = client.post("/gradio_api/upload", files={"files": ("big.png", b"\x89PNG" + b"\0" * 20000)})
            assert upload.status_code == 413
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


class CharTokenizer:
    """One token per character; id 0 is EOS."""

    eos_token_id = 0

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if i != self.eos_token_id)


@pytest.mark.parametrize("text, stop, expected, reason", [
    ("  red square  ", [], "red square", "stop"),
    ("red\nblue", ["\n"], "red", "stop"),
    ("a circle##x", ["##"], "a circle", "stop"),
    ("abcdefgh", ["zz"], "abcdef", "length"),
])
def test_streamed_pieces_join_to_the_final_answer(text, stop, expected, reason):
    import torch

    from dsvl_exp.inference.batching import TextDeltas, finish
    from dsvl_exp.inference.generation import Completion

    tokenizer, max_tokens = CharTokenizer(), 6 if reason == "length" else 64
    ids = [ord(c) for c in text][:max_tokens] + ([0] if reason == "stop" else [])
    pieces: list[str] = []
    stream = TextDeltas(tokenizer, stop, pieces.append)
    for token in ids:
        stream.put(torch.tensor([token]))
    answer = finish(tokenizer, Completion(ids[:-1] if reason == "stop" else ids, prompt_tokens=5), max_tokens, stop)
    stream.finish(answer.text)
    assert "".join(pieces) == answer.text == expected and answer.finish_reason == reason
    assert all(pieces)
