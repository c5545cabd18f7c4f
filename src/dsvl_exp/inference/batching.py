"""One worker thread that owns the model and answers queued requests, several per decode when
they can share one: requests waiting with the same sampling settings and system prompt go into
one batch (greedy rows are independent, so a batched answer equals the answer alone; the batch
decodes to its longest `max_tokens` and each row is cut to its own). A seeded or streamed
request runs alone (a seed fixes one request's draws; streaming is one row's text)."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

import torch

from dsvl_exp.data.template import ChatTemplate
from dsvl_exp.inference.generation import Completion, complete_batch
from dsvl_exp.inference.openai_messages import ChatRequest


@dataclass
class Answer:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    positions = [text.find(s) for s in stop if s in text]
    return (text[: min(positions)], True) if positions else (text, False)


def finish(tokenizer, completion: Completion, max_tokens: int, stop: list[str]) -> Answer:
    """The API's answer from a row's token ids: the text as chat prints it, cut at a stop string."""
    ids = completion.token_ids[:max_tokens]
    text, stopped = cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True).strip(), stop)
    used = len(ids)
    if stopped:  # the tokens it took to reach the stop string
        used = next(k for k in range(1, len(ids) + 1) if cut_at_stop(tokenizer.decode(ids[:k], skip_special_tokens=True)
                                                                       .strip(), stop)[1])
    reason = "stop" if stopped or len(completion.token_ids) < max_tokens else "length"
    return Answer(text, reason, completion.prompt_tokens, used)


class TextDeltas:
    """A transformers-style streamer (`put` / `end`) for one row that hands out text pieces whose
    concatenation is exactly the final answer: text the end could still change (trailing space
    that strip() drops, a possible stop string's start, half a UTF-8 character) is held back."""

    def __init__(self, tokenizer, stop: list[str], emit):
        self.tokenizer, self.stop, self.emit = tokenizer, stop, emit
        self.ids: list[int] = []
        self.sent = ""
        self.stopped = False

    def put(self, tokens) -> None:
        token = int(tokens.reshape(-1)[0])
        if self.stopped or token == self.tokenizer.eos_token_id:
            self.stopped = True
            return
        self.ids.append(token)
        text, self.stopped = cut_at_stop(self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip(), self.stop)
        safe = text if self.stopped else self.safe_prefix(text.rstrip())
        if len(safe) > len(self.sent) and safe.startswith(self.sent):
            self.emit(safe[len(self.sent):])
            self.sent = safe

    def safe_prefix(self, text: str) -> str:
        text = text.rstrip("\ufffd")
        held = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return text[: len(text) - held]

    def end(self) -> None:
        pass

    def finish(self, final_text: str) -> None:
        """The rest of the final answer (normally everything after what was sent)."""
        if final_text.startswith(self.sent) and len(final_text) > len(self.sent):
            self.emit(final_text[len(self.sent):])


@dataclass
class Job:
    request: ChatRequest
    future: Future = field(default_factory=Future)
    pieces: queue.Queue | None = None  # streamed text pieces, None at the end

    @property
    def key(self) -> tuple | None:
        """Jobs with equal keys share a batch; None runs alone."""
        if self.request.seed is not None or self.request.stream:
            return None
        settings = self.request.settings
        return settings.do_sample, settings.temperature, settings.top_p, self.request.system_prompt


class Batcher:
    def __init__(self, loaded, max_batch: int = 16):
        self.loaded = loaded
        self.max_batch = max_batch
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.batch_sizes: list[int] = []  # what ran, for tests and the log
        self.worker = threading.Thread(target=self.run, name="dsvl-batcher", daemon=True)
        self.worker.start()

    def submit(self, request: ChatRequest) -> Job:
        job = Job(request, pieces=queue.Queue() if request.stream else None)
        self.jobs.put(job)
        return job

    def next_batch(self) -> list[Job]:
        first = self.jobs.get()
        batch, others = [first], []
        while first.key is not None and len(batch) < self.max_batch:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            (batch if job.key == first.key else others).append(job)
        for job in others:  # back in line, in order, for the next batch
            self.jobs.put(job)
        return batch

    def run(self) -> None:
        while True:
            batch = self.next_batch()
            try:
                self.answer(batch)
            except BaseException as error:  # the clients get an error, the worker keeps serving
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(error)
                    if job.pieces is not None:
                        job.pieces.put(None)

    def template_for(self, request: ChatRequest) -> ChatTemplate | None:
        return None if request.system_prompt is None else ChatTemplate(system_prompt=request.system_prompt)

    def answer(self, batch: list[Job]) -> None:
        self.batch_sizes.append(len(batch))
        first = batch[0].request
        longest = max(job.request.settings.max_new_tokens for job in batch)
        settings = replace(first.settings, max_new_tokens=longest)
        streamer = None
        if first.stream:
            streamer = TextDeltas(self.loaded.tokenizer, first.stop, batch[0].pieces.put)
        if first.seed is not None:
            torch.manual_seed(first.seed)
        completions = complete_batch(self.loaded, [job.request.conversation for job in batch], settings,
                                     template=self.template_for(first), streamer=streamer)
        for job, completion in zip(batch, completions):
            answer = finish(self.loaded.tokenizer, completion, job.request.settings.max_new_tokens, job.request.stop)
            if streamer is not None:
                streamer.finish(answer.text)
                job.pieces.put(None)
            job.future.set_result(answer)
