"""An OpenAI chat-completions request -> the conversation and settings this model answers.

`messages`: an optional first `system` message (it replaces the template's system prompt), then
`user` / `assistant` turns ending with a `user` turn. A user turn's content is a string or a
list of parts, `{"type": "text", "text": ...}` and `{"type": "image_url", "image_url": {"url":
...}}` with a `data:image/...;base64,` URL or a `file://` path under the operator's allowed
folder. Each user turn is a round; its images come before its question (`### Image k:` numbered
on across rounds, as in training); consecutive user turns join into one round.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.inference.access import AccessPolicy, UploadError
from dsvl_exp.inference.generation import GenerationSettings

OPENAI_DEFAULT_TEMPERATURE = 1.0


class RequestError(ValueError):
    """A request the API answers with an OpenAI-style error (`status` 400, 413, ...)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param = param
        self.status = status


@dataclass
class ChatRequest:
    conversation: Conversation
    settings: GenerationSettings
    system_prompt: str | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False


@dataclass
class Turn:
    role: str
    text: str
    images: list[str]


def image_entry(url: str, where: str, policy: AccessPolicy, file_root: Path | None) -> str:
    """An image entry ImageCache reads (`base64:...` or a path), checked against the policy."""
    if url.startswith("data:"):
        header, comma, payload = url.partition(",")
        if not comma or ";base64" not in header or not header[5:].startswith("image/"):
            raise RequestError(f"{where}: a data URL must be data:image/<type>;base64,<data>", where)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"{where}: the base64 data do not decode", where) from None
        checked(policy, data, where)
        return "base64:" + payload
    if url.startswith("file://"):
        if file_root is None:
            raise RequestError(f"{where}: file:// images are off; the operator allows them with --allow-file-dir DIR", where)
        path = Path(unquote(urlparse(url).path)).resolve()
        if not path.is_relative_to(file_root.resolve()):
            raise RequestError(f"{where}: {path} is outside the allowed folder {file_root}", where)
        if not path.is_file():
            raise RequestError(f"{where}: image file not found: {path}", where)
        checked(policy, path.read_bytes(), where)
        return str(path)
    raise RequestError(f"{where}: image_url must be a data:image/...;base64 URL or a file:// path (no web downloads)", where)


def checked(policy: AccessPolicy, data: bytes, where: str) -> None:
    try:
        policy.check_image(data, where)
    except UploadError as error:
        raise RequestError(str(error), where, status=413 if error.too_large else 400) from None


def parse_turn(message, index: int, policy: AccessPolicy, file_root: Path | None) -> Turn:
    where = f"messages[{index}]"
    if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
        raise RequestError(f"{where}: expected an object with role system, user or assistant", where)
    content = message.get("content")
    if isinstance(content, str):
        return Turn(message["role"], content, [])
    if not isinstance(content, list):
        raise RequestError(f"{where}.content: expected a string or a list of content parts", f"{where}.content")
    texts, images = [], []
    for k, part in enumerate(content):
        part_where = f"{where}.content[{k}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and message["role"] == "user":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise RequestError(f"{part_where}: image_url needs a url", part_where)
            images.append(image_entry(url, part_where, policy, file_root))
        else:
            raise RequestError(f"{part_where}: expected a text part{' or an image_url part' if message['role'] == 'user' else ''}",
                               part_where)
    return Turn(message["role"], "\n".join(texts), images)


def conversation_of(turns: list[Turn], max_images: int) -> tuple[Conversation, str | None]:
    system_prompt = None
    if turns and turns[0].role == "system":
        system_prompt, turns = turns[0].text, turns[1:]
    merged: list[Turn] = []
    for turn in turns:
        if turn.role == "system":
            raise RequestError("messages: a system message may only come first", "messages")
        if merged and merged[-1].role == turn.role == "user":
            merged[-1] = Turn("user", f"{merged[-1].text}\n{turn.text}".strip(), merged[-1].images + turn.images)
        elif merged and merged[-1].role == turn.role:
            raise RequestError("messages: two assistant messages in a row", "messages")
        else:
            merged.append(turn)
    if not merged or merged[0].role != "user" or merged[-1].role != "user":
        raise RequestError("messages: expected user / assistant turns that start and end with a user message", "messages")
    if not merged[-1].text.strip():
        raise RequestError("messages: the last user message has no text to answer", "messages")
    rounds, images = [], []
    for k in range(0, len(merged), 2):
        user, answer = merged[k], (merged[k + 1].text if k + 1 < len(merged) else "")
        rounds.append(Round(question=user.text.strip(), answer=answer, num_images=len(user.images)))
        images += user.images
    if len(images) > max_images:
        raise RequestError(f"messages: {len(images)} images; this model takes at most {max_images} per conversation",
                           "messages")
    return Conversation(id="request", images=tuple(images), rounds=tuple(rounds)), system_prompt


def number(body: dict, key: str, default, kind=float, low=None, high=None):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise RequestError(f"{key}: expected a number", key)
    if (low is not None and value < low) or (high is not None and value > high):
        raise RequestError(f"{key}={value}: expected a value in [{low}, {high}]", key)
    return kind(value)


def parse_request(body, policy: AccessPolicy, file_root: Path | None, max_images: int, default_max_tokens: int,
                  max_tokens_limit: int = 4096) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: expected a non-empty list", "messages")
    if number(body, "n", 1, int) != 1:
        raise RequestError("n: only n=1 is supported", "n")
    max_tokens = number(body, "max_completion_tokens", None, int, 1, max_tokens_limit)
    max_tokens = max_tokens or number(body, "max_tokens", default_max_tokens, int, 1, max_tokens_limit)
    temperature = number(body, "temperature", OPENAI_DEFAULT_TEMPERATURE, float, 0, 2)
    top_p = number(body, "top_p", 1.0, float, 0, 1)
    if top_p == 0:
        raise RequestError("top_p: must be greater than 0", "top_p")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise RequestError("stop: expected a string or a list of up to 4 non-empty strings", "stop")
    seed = number(body, "seed", None, int)
    turns = [parse_turn(message, k, policy, file_root) for k, message in enumerate(messages)]
    conversation, system_prompt = conversation_of(turns, max_images)
    settings = GenerationSettings(max_new_tokens=max_tokens, greedy=temperature == 0, temperature=temperature, top_p=top_p)
    return ChatRequest(conversation, settings, system_prompt, stop, seed, bool(body.get("stream", False)))
