"""Start-up that scales: round lengths computed once (batched, split across ranks) and cached by
data and tokenizer; the bench script's figures come from the real start-up path."""

import json
import sys

import numpy as np
import pytest

from dsvl_exp.data import length
from dsvl_exp.data.build import build_conversations
from dsvl_exp.data.length import fit_to_max_seq_len, lengths_cache_path, round_lengths
from dsvl_exp.data.template import ChatTemplate

from helpers import REPO, run_cli, subprocess_env
from reference_fixtures import write_image


def native(tmp_path, count):
    write_image(tmp_path / "a.png")
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"id": f"c{k}", "images": ["a.png"] * (k % 3),
                                        "rounds": [{"question": "<image>\n" * (k % 3) + f"question {k} " * (k % 5), "answer": "a" * (k + 1)},
                                                   {"question": "more?", "answer": "yes " * k}][: 1 + k % 2]}) + "\n"
                            for k in range(count)))
    return [{"format": "native", "path": str(path)}]


def test_lengths_are_exact_cached_by_data_and_tokenizer_and_reused(tmp_path, tokenizer, monkeypatch):
    built = build_conversations(None, native(tmp_path, 40), [])
    template = ChatTemplate()
    path = lengths_cache_path(tmp_path / "cache", built.key, "train", tokenizer, template, 5)
    first = fit_to_max_seq_len(built.train, tokenizer, template, 5, 120, "train", cache_path=path)
    exact = [round_lengths(c, tokenizer, template, 5) for c in built.train]  # one call per round, no batching
    expected_kept = [i for i, rounds in enumerate(exact) if rounds[0] <= 120]
    assert first.kept == expected_kept and first.dropped == 40 - len(expected_kept) > 0
    assert first.lengths == [rounds[0] if sum(rounds) > 120 else sum(rounds) for rounds in (exact[i] for i in expected_kept)]
    assert first.truncated == sum(1 for i in expected_kept if sum(exact[i]) > 120) > 0
    assert path.is_file()

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized although the cache matches")

    monkeypatch.setattr(length, "batched_round_lengths", no_tokenizing)
    again = fit_to_max_seq_len(built.train, tokenizer, template, 5, 120, "train", cache_path=path)
    assert (again.kept, again.lengths, again.truncated) == (first.kept, first.lengths, first.truncated)
    # other data, tokens per image or template: another cache file
    rebuilt = build_conversations(None, native(tmp_path, 41), [])
    assert rebuilt.key != built.key
    assert len({path, lengths_cache_path(tmp_path / "cache", rebuilt.key, "train", tokenizer, template, 5),
                lengths_cache_path(tmp_path / "cache", built.key, "train", tokenizer, template, 6),
                lengths_cache_path(tmp_path / "cache", built.key, "train", tokenizer, ChatTemplate(system_prompt=""), 5)}) == 4
    np.savez(path, lengths=np.zeros(3, dtype=np.int32), rounds=np.ones(3, dtype=np.int32))  # stale content: recomputed
    monkeypatch.undo()
    assert fit_to_max_seq_len(built.train, tokenizer, template, 5, 120, "train", cache_path=path).lengths == first.lengths


@pytest.mark.slow
@pytest.mark.multiprocess
def test_bench_startup_two_ranks_cold_and_warm(tmp_path, tokenizer):
    """The bench's 2-rank start-up splits lengths across ranks and gathers them (the script exits
    non-zero when ranks disagree); they equal one process's, and the warm run loads the cache."""
    out = tmp_path / "figures.json"
    run_cli([sys.executable, REPO / "scripts/bench_data_startup.py", "--conversations", "3000", "--images", "5",
             "--ranks", "2", "--workdir", tmp_path / "w", "--json", out], env=subprocess_env(drop=("OMP_NUM_THREADS",)))
    figures = json.loads(out.read_text())["figures"]
    assert [(f["ranks"], f["phase"]) for f in figures] == [(2, "cold"), (2, "warm")]
    assert figures[0]["samples"] == 2997  # 0.1 % held out
    assert figures[1]["phases"]["lengths"] < figures[0]["phases"]["lengths"]
    built = build_conversations(None, [{"format": "native", "path": str(tmp_path / "w/index.jsonl")}], [], eval_split=0.001)
    one_process = fit_to_max_seq_len(built.train, tokenizer, ChatTemplate(), 64, 4096, "train")
    assert figures[0]["length_sum"] == figures[1]["length_sum"] == sum(one_process.lengths)


def test_parsed_datasets_are_reused_until_their_file_changes(tmp_path, monkeypatch):
    from dsvl_exp.data.formats import native as native_format

    spec = native(tmp_path, 6)
    first = build_conversations(None, spec, [], cache_dir=str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("parsed-native-*.json"))) == 1

    def no_parsing(*args, **kwargs):
        raise AssertionError("parsed although the file is unchanged")

    monkeypatch.setattr(native_format, "read_native_jsonl", no_parsing)
    again = build_conversations(None, spec, [], cache_dir=str(tmp_path / "cache"))
    assert again.train == first.train and again.key == first.key
    data = tmp_path / "d.jsonl"
    data.write_text(data.read_text().replace('"answer": "a"', '"answer": "b"'))
    with pytest.raises(AssertionError, match="parsed although"):  # the file changed: parsed again
        build_conversations(None, spec, [], cache_dir=str(tmp_path / "cache"))
