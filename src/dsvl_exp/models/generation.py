"""Batched decoding with a KV cache, for prompts given as embeddings with 0/1/2 token types.

A manual loop rather than `generate`: transformers' `generate` cannot carry MMCA's per-step
token types (nor a custom 4D mask), and this keeps causal and MMCA decoding on one path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import DynamicCache, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from dsvl_exp import collectives
from dsvl_exp.models.splice import TEXT


def _all_ranks_done(done: bool, synced_gpus: bool, device) -> bool:
    if not (synced_gpus and collectives.is_distributed()):
        return done
    pending = torch.tensor(0.0 if done else 1.0, device=device)
    return collectives.all_reduce_(pending).item() == 0.0


@torch.no_grad()
def decode(
    decoder,
    embeds: torch.Tensor,  # [batch, prompt_length, hidden], left-padded
    token_types: torch.Tensor,  # [batch, prompt_length], 0 pad / 1 text / 2 image
    position_ids: torch.Tensor,  # [batch, prompt_length]
    mask_kwargs: Callable[[torch.Tensor], dict],
    eos_token_id: int,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    synced_gpus: bool = False,
    streamer=None,
) -> list[list[int]]:
    """New token ids per row (EOS excluded). Rows are independent: batched == one at a time.

    `streamer`: transformers' streamer interface (`put(next_tokens)` each step, `end()`), e.g.
    `TextStreamer` / `TextIteratorStreamer` for a batch of one."""
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0 when sampling")
    warpers = LogitsProcessorList()
    if do_sample:
        warpers.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
    batch = embeds.shape[0]
    device = embeds.device
    cache = DynamicCache(config=decoder.config)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    new_tokens: list[torch.Tensor] = []
    step_embeds, step_positions = embeds, position_ids
    for _ in range(max_new_tokens):
        logits = decoder(
            inputs_embeds=step_embeds,
            position_ids=step_positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
            **mask_kwargs(token_types),
        ).logits[:, -1].float()
        if do_sample:
            probabilities = torch.softmax(warpers(None, logits), dim=-1)
            next_tokens = torch.multinomial(probabilities, 1).squeeze(1)
        else:
            next_tokens = logits.argmax(dim=-1)
        next_tokens = next_tokens.masked_fill(finished, eos_token_id)
        new_tokens.append(next_tokens)
        if streamer is not None:
            streamer.put(next_tokens.cpu())
        finished |= next_tokens == eos_token_id
        if _all_ranks_done(bool(finished.all()), synced_gpus, device):
            break
        step_embeds = decoder.get_input_embeddings()(next_tokens)[:, None]
        step_positions = step_positions[:, -1:] + 1
        token_types = torch.cat([token_types, torch.full((batch, 1), TEXT, dtype=token_types.dtype, device=device)], dim=1)
    if streamer is not None:
        streamer.end()
    results = []
    for row in (torch.stack(new_tokens, dim=1).tolist() if new_tokens else [[] for _ in range(batch)]):
        results.append(row[: row.index(eos_token_id)] if eos_token_id in row else row)
    return results
