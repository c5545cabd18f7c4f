"""lmms-eval's `--model dsvl`: a model of this project answering lmms-eval's requests.

    lmms-eval --model dsvl --model_args pretrained=MODEL,batch_size=16 --tasks TASK

`pretrained` is what `chat` / `evaluate` take (an export folder or a run directory). Each request
becomes a one-round conversation in the training template (its images first, `### Image k:`,
then the question); `until` strings cut the answer. Answers go through the same batched call
as `evaluate` (inference.generation.complete_batch). Log-likelihood is not implemented.
"""

from __future__ import annotations

import base64
import io

from lmms_eval.api.model import lmms

from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.inference.generation import GenerationSettings, complete_batch
from dsvl_exp.inference.loading import load_model


def image_entry(image) -> str:
    """A PIL image as the `base64:` PNG entry the model's image cache reads (lossless)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "base64:" + base64.b64encode(buffer.getvalue()).decode()


def settings_of(gen_kwargs: dict) -> tuple[GenerationSettings, list[str]]:
    temperature = float(gen_kwargs.get("temperature", 0) or 0)
    greedy = not gen_kwargs.get("do_sample", False) or temperature == 0
    until = gen_kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    return GenerationSettings(max_new_tokens=int(gen_kwargs.get("max_new_tokens", 64)), greedy=greedy,
                              temperature=temperature or 1.0, top_p=float(gen_kwargs.get("top_p") or 1.0)), until


class DSVLLmms(lmms):
    is_simple = True

    def __init__(self, pretrained: str, batch_size: int | str = 16, max_images: int | None = None, **kwargs) -> None:
        super().__init__()
        self.loaded = load_model(pretrained, max_images=int(max_images) if max_images else None)
        self.batch_size = int(batch_size)

    def generate_until(self, requests) -> list[str]:
        answers: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):  # one batch per distinct generation setting
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(index)
        for indices in groups.values():
            settings, until = settings_of(dict(requests[indices[0]].args[1]))
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                conversations = [self.conversation(requests[i].args) for i in chunk]
                for i, completion in zip(chunk, complete_batch(self.loaded, conversations, settings)):
                    text = self.loaded.tokenizer.decode(completion.token_ids, skip_special_tokens=True).strip()
                    for stop in until:
                        text = text.split(stop)[0] if stop else text
                    answers[i] = text
        return answers

    def conversation(self, args) -> Conversation:
        context, _, doc_to_visual, doc_id, task, split = args
        visuals = [v for v in (doc_to_visual(self.task_dict[task][split][doc_id]) or []) if v is not None]
        images = tuple(image_entry(v) for v in visuals)
        return Conversation(id=f"{task}/{doc_id}", images=images,
                            rounds=(Round(question=context.strip(), answer="", num_images=len(images)),))

    def loglikelihood(self, requests):
        raise NotImplementedError("the dsvl model answers generate_until tasks only")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("the dsvl model answers one-round generate_until tasks only")
