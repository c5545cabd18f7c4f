"""synced_gpus: under ZeRO-3 every rank must run as many decoder passes as the slowest one."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank_main(rank, init_file, results):
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    from conftest import build_tiny_model
    from dsvl_exp.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    model = build_tiny_model(tokenizer, attention="mmca").eval()
    calls = []
    model.decoder.get_decoder().register_forward_hook(lambda *args: calls.append(1))
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    input_ids = torch.tensor([[tokenizer.bos_token_id, 50, image_id, 30]])
    images = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model.eos_token_id = -1
    first = model.generate(images, input_ids, torch.ones_like(input_ids), [1], max_new_tokens=1)[0][0]
    # rank 0 stops at its first token; rank 1 never meets its EOS
    model.eos_token_id = first if rank == 0 else -1
    calls.clear()
    tokens = model.generate(images, input_ids, torch.ones_like(input_ids), [1], max_new_tokens=5, synced_gpus=True)[0]
    results[rank] = (len(calls), len(tokens))
    dist.destroy_process_group()


@pytest.mark.multiprocess
def test_every_rank_steps_until_all_are_done(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
    assert results[0] == (5, 0)  # stopped at once, yet kept stepping with the other rank
    assert results[1] == (5, 5)
