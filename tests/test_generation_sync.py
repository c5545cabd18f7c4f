"""synced_gpus: under ZeRO-3 every rank must run as many decoder passes as the slowest one."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank_main(rank, init_file, results):
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    from dsvl_exp.models.decoder import build_llama_decoder
    from dsvl_exp.models.generation import decode

    torch.manual_seed(0)
    decoder = build_llama_decoder(50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, attention="mmca").eval()
    calls = []
    decoder.register_forward_hook(lambda *args: calls.append(1))
    embeds = torch.randn(1, 4, 16)
    types = torch.tensor([[1, 2, 2, 1]])
    positions = torch.arange(4)[None]
    first = decode(decoder, embeds, types, positions, lambda t: {"mmca_token_types": t}, eos_token_id=-1, max_new_tokens=1)[0][0]
    # rank 0 stops at its first token; rank 1 never meets its EOS
    eos = first if rank == 0 else -1
    calls.clear()
    tokens = decode(decoder, embeds, types, positions, lambda t: {"mmca_token_types": t}, eos_token_id=eos,
                    max_new_tokens=5, synced_gpus=True)[0]
    results[rank] = (len(calls), len(tokens))
    dist.destroy_process_group()


@pytest.mark.multiprocess
def test_every_rank_steps_until_all_are_done(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
    assert results[0] == (5, 0)  # stopped at once, yet kept stepping with the other rank
    assert results[1] == (5, 5)
