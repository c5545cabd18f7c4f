"""Eval loss (token-weighted, all-reduced) and generation-based answer accuracy."""

from __future__ import annotations

import math
import string

import torch

from dsvl_exp.data.collate import left_padded
from dsvl_exp.data.conversation import Conversation
from dsvl_exp.data.template import ChatTemplate, tokenize_generation_prompt
from dsvl_exp.training import distributed


@torch.no_grad()
def evaluate_loss(engine, loader, device, max_batches: int | None = None) -> float:
    was_training = engine.training
    engine.eval()
    # the sum stays on the device (float64, added in order: the same bits as Python floats); one read at the end
    total_loss, total_tokens = torch.zeros((), dtype=torch.float64, device=device), 0
    for index, batch in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        batch = move_to(model_inputs(batch), device)
        output = engine(**batch)
        total_loss += output.loss.detach().double() * output.num_supervised_tokens
        total_tokens += output.num_supervised_tokens
    total_loss, total_tokens = distributed.all_reduce_sum([total_loss.item(), total_tokens])
    if was_training:
        engine.train()
    return total_loss / total_tokens if total_tokens else math.nan


def normalize_answer(text: str) -> str:
    return text.strip().lower().strip(string.punctuation + " ").strip()


def generation_requests(conversations: list[Conversation]) -> list[tuple[Conversation, int]]:
    """One request per round: the history with its true answers, then that round's question."""
    return [(conv, k) for conv in conversations for k in range(len(conv.rounds))]


@torch.no_grad()
def evaluate_answers(
    model,
    conversations: list[Conversation],
    tokenizer,
    template: ChatTemplate,
    pixel_values,  # callable: Conversation -> [num_images, 3, H, W]
    device,
    batch_size: int,
    max_new_tokens: int,
    synced_gpus: bool = False,
    num_examples: int = 5,
) -> tuple[float, list[dict]]:
    """Exact-match accuracy of greedy answers over every round, sharded across ranks."""
    requests = generation_requests(conversations)
    rank, world = distributed.rank(), distributed.world_size()
    shard = requests[rank::world]
    # Every rank runs the same number of batches: ZeRO-3 gathers parameters collectively.
    num_batches = math.ceil(len(requests) / world / batch_size)
    was_training = model.training
    model.eval()
    correct, counted, examples = 0, 0, []
    for b in range(num_batches):
        chunk = shard[b * batch_size:(b + 1) * batch_size]
        real = len(chunk)
        if not chunk:  # this rank ran out; still take part with a throw-away request
            chunk = [requests[0]]
        prompts, images, images_per_sample = [], [], []
        for conv, k in chunk:
            prompts.append(tokenize_generation_prompt(tokenizer, template, conv, k))
            shown = sum(r.num_images for r in conv.rounds[: k + 1])
            pixels = pixel_values(conv)[:shown]
            images.append(pixels)
            images_per_sample.append(shown)
        input_ids, attention_mask = left_padded(prompts, tokenizer.pad_token_id)
        outputs = model.generate(
            images=torch.cat(images).to(device),
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            image_num=images_per_sample,
            max_new_tokens=max_new_tokens,
            synced_gpus=synced_gpus,
        )
        for (conv, k), new_ids in zip(chunk[:real], outputs[:real]):
            predicted = tokenizer.decode(new_ids, skip_special_tokens=True)
            expected = conv.rounds[k].answer
            hit = normalize_answer(predicted) == normalize_answer(expected)
            correct += hit
            counted += 1
            if len(examples) < num_examples:
                examples.append({"id": conv.id, "round": k, "question": conv.rounds[k].question,
                                 "expected": expected, "predicted": predicted, "correct": hit})
    if was_training:
        model.train()
    correct, counted = distributed.all_reduce_sum([correct, counted])
    return (correct / counted if counted else math.nan), examples


def model_inputs(batch: dict) -> dict:
    """The batch without its bookkeeping (the sample ids the collator adds for error messages)."""
    return {k: v for k, v in batch.items() if k != "sample_ids"}


def move_to(batch: dict, device) -> dict:
    """non_blocking: from the loader's pinned memory the copy overlaps the GPU's work (a no-op on CPU)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
