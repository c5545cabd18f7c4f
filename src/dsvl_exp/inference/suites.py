"""Evaluation suites: conversations of rounds (question, images shown with it, optional reference
answer), read from either of two layouts.

- The reference's eval JSON (DeepSpeed-VisualChat `eval/eval_data/*.json`): one object,
  `{test_name: [[question, "img1 img2"] | [question], ...]}`, one inner list per round, image
  paths space-separated. As an extension a third element is the round's reference answer
  (`[question, "", answer]` for a text-only round with one).
- The project's native JSONL (data/formats/native.py), where `answer` is optional here.

Relative image paths resolve against the suite file's folder, else the working directory (the
reference's files name paths relative to the repository root, where its script runs).
Built-in names: `synthetic` (the default synthetic data's eval split) and `demo` (suites/demo.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dsvl_exp.data.errors import DataError
from dsvl_exp.data.formats.native import strip_image_tokens
from dsvl_exp.files import jsonl_records


@dataclass(frozen=True)
class EvalRound:
    question: str
    images: tuple[str, ...] = ()
    answer: str | None = None


@dataclass(frozen=True)
class EvalConversation:
    id: str
    rounds: tuple[EvalRound, ...]


@dataclass(frozen=True)
class Suite:
    name: str
    path: str
    conversations: tuple[EvalConversation, ...]

    @property
    def num_rounds(self) -> int:
        return sum(len(c.rounds) for c in self.conversations)


def resolve_image(entry: str, base: Path) -> str:
    if entry.startswith("base64:") or Path(entry).is_absolute():
        return entry
    beside = base / entry
    return str(beside) if beside.exists() or not Path(entry).exists() else entry


def read_reference_json(path: Path) -> list[EvalConversation]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: malformed JSON ({error.msg} at line {error.lineno})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read (brackets within brackets); fix the file") from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a non-empty object {{test_name: [[question, \"img1 img2\"] | [question], ...]}}")
    conversations = []
    for name, rounds_raw in data.items():
        if not isinstance(rounds_raw, list) or not rounds_raw:
            raise DataError(f"{path}: test {name!r} must be a non-empty list of rounds")
        rounds = []
        for k, item in enumerate(rounds_raw):
            if (not isinstance(item, list) or not 1 <= len(item) <= 3 or not all(isinstance(x, str) for x in item)):
                raise DataError(f"{path}: test {name!r} round {k}: expected [question], [question, \"img1 img2\"] "
                                f"or [question, \"images\", answer] (strings), got {item!r}")
            images = tuple(resolve_image(p, path.parent) for p in (item[1].split() if len(item) > 1 else []))
            answer = item[2].strip() if len(item) > 2 and item[2].strip() else None
            rounds.append(EvalRound(question=item[0].strip(), images=images, answer=answer))
        conversations.append(EvalConversation(id=str(name), rounds=tuple(rounds)))
    return conversations


def read_native_suite(path: Path) -> list[EvalConversation]:
    conversations = []
    for where, record in jsonl_records(path, DataError):
        rounds_raw, images = record.get("rounds"), record.get("images", [])
        if not isinstance(rounds_raw, list) or not rounds_raw or not isinstance(images, list):
            raise DataError(f"{where}: expected {{\"images\": [...], \"rounds\": [{{\"question\": ..., \"answer\": ...}}]}}")
        queue = [resolve_image(i, path.parent) for i in images]
        rounds = []
        for k, item in enumerate(rounds_raw):
            if not isinstance(item, dict) or not isinstance(item.get("question"), str):
                raise DataError(f"{where}: rounds[{k}] needs a string 'question'")
            question, count = strip_image_tokens(item["question"])
            if count > len(queue):
                raise DataError(f"{where}: rounds[{k}] has {count} '<image>' placeholder(s) but only {len(queue)} "
                                "image(s) are left in 'images'; they must match one to one")
            shown, queue = tuple(queue[:count]), queue[count:]
            answer = item.get("answer")
            rounds.append(EvalRound(question, shown, answer.strip() if isinstance(answer, str) and answer.strip() else None))
        if queue:
            raise DataError(f"{where}: {len(queue)} image(s) in 'images' have no '<image>' placeholder in the questions")
        conversations.append(EvalConversation(id=str(record.get("id", where)), rounds=tuple(rounds)))
    return conversations


def read_suite(spec: str) -> Suite:
    """A built-in name or a path to a .json (reference layout) or .jsonl (native) file."""
    from dsvl_exp.inference import builtin_suites

    if spec in builtin_suites.NAMES:
        path = builtin_suites.ensure(spec)
        name = spec
    else:
        path = Path(spec).expanduser()
        name = path.stem
    if not path.is_file():
        raise DataError(f"suite {spec}: no such file and not a built-in suite ({', '.join(builtin_suites.NAMES)})")
    if path.suffix == ".jsonl":
        conversations = read_native_suite(path)
    elif path.suffix == ".json":
        conversations = read_reference_json(path)
    else:
        raise DataError(f"suite {path}: expected .json (the reference's eval layout) or .jsonl (native format)")
    if not conversations:
        raise DataError(f"suite {path}: no conversations")
    check_images(path, conversations)
    return Suite(name=name, path=str(path), conversations=tuple(conversations))


def check_images(path: Path, conversations: list[EvalConversation]) -> None:
    """Fail before any model work, naming the first missing file and how many are missing."""
    missing = [(c.id, k, image) for c in conversations for k, r in enumerate(c.rounds) for image in r.images
               if not image.startswith("base64:") and not Path(image).is_file()]
    if missing:
        test, k, image = missing[0]
        raise DataError(f"suite {path}: {len(missing)} image file(s) not found, first {image} (test {test!r}, round {k}); "
                        "relative paths resolve against the suite's folder, then the working directory")
