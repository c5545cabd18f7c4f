"""One bad record never stops a run without naming itself: a stray `<image>`, a huge line, an image
bomb, a directory for an image, brackets nested 100,000 deep, empty questions and repeated ids are
each an error naming file and record, a counted skip, or a counted warning."""

from __future__ import annotations

import json
import logging
import struct
import sys
import zlib
from pathlib import Path

import pytest

from dsvl_exp.data.build import build_conversations
from dsvl_exp.data.checks import check_image_files
from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.dataset import ConversationDataset
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.images import load_image
from dsvl_exp.data.template import ChatTemplate
from dsvl_exp.files import jsonl_records
from dsvl_exp.inference.cli import UsageError
from dsvl_exp.models.vision import clip_image_processor
from helpers import run_cli, run_train
from reference_fixtures import write_image


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def record(id_: str, question: str = "what is it?", answer: str = "a shape", images=()) -> dict:
    return {"id": id_, "images": list(images), "rounds": [{"question": question, "answer": answer}]}


def native(path: Path) -> list[dict]:
    return [{"format": "native", "path": str(path)}]


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height (Pillow reads the header and refuses it before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
                     + chunk(b"IEND", b""))
    return path


# ---- 5: a stray <image> ------------------------------------------------------------------------
def test_a_stray_image_placeholder_is_an_error_naming_the_record_or_a_counted_skip(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [record("ok1"), record("bad", answer="see <image> here"), record("ok2")])
    with pytest.raises(DataError, match=r"d\.jsonl:2: sample bad: rounds\[0\]\.answer holds '<image>'.*on_bad_record=skip"):
        build_conversations(None, native(data), [])
    built = build_conversations(None, native(data), [], on_bad_record="skip")
    assert [c.id for c in built.train] == ["ok1", "ok2"] and built.dropped == {"stray_image_placeholder": 1}


def test_the_dataset_names_a_sample_whose_image_tokens_do_not_match_its_images(tokenizer):
    stray = Conversation("c7", (), (Round("q", "an <image> answer", 0),), source="x.jsonl:7")
    dataset = ConversationDataset([stray], tokenizer, clip_image_processor(16), ChatTemplate())
    with pytest.raises(DataError, match=r"x\.jsonl:7: sample c7 renders 1 '<image>' token\(s\) for 0 image\(s\)"):
        dataset[0]


@pytest.mark.slow
def test_train_stops_before_the_model_on_a_stray_placeholder(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [record("ok"), record("bad", answer="<image>")])
    with pytest.raises(AssertionError, match=r"d\.jsonl:2: sample bad: rounds\[0\]\.answer holds '<image>'") as failure:
        run_train(tmp_path / "run", "data=native", f"data.train.0.path={data}", f"data.eval.0.path={data}")
    assert "Traceback" not in str(failure.value) and not (tmp_path / "run" / "parameters.json").exists()


# ---- 6: one huge line --------------------------------------------------------------------------
PEAK_SCRIPT = """
import json, resource, sys, time
from dsvl_exp.data.build import build_conversations
from dsvl_exp.data.length import fit_to_max_seq_len
from dsvl_exp.data.template import ChatTemplate
from dsvl_exp.models.tokenizer import load_tokenizer
tokenizer = load_tokenizer()
started = time.perf_counter()
built = build_conversations(None, [{"format": "native", "path": sys.argv[1]}], [])
fitted = fit_to_max_seq_len(built.train, tokenizer, ChatTemplate(), 64, 512, "train")
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "seconds": time.perf_counter() - started,
                  "kept": len(fitted.conversations), "dropped": fitted.dropped}))
"""


def peak_of(data: Path) -> dict:
    result = run_cli([sys.executable, "-c", PEAK_SCRIPT, data])
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_one_huge_line_costs_no_more_than_a_bounded_prefix(tmp_path):
    small = [record(f"c{k}", answer="a red circle " * (k % 7 + 1)) for k in range(200)]
    huge = record("huge", answer="lorem ipsum dolor sit amet " * (8_000_000 // 27))  # an 8 MB line
    without = peak_of(write_jsonl(tmp_path / "without.jsonl", small))
    with_huge = peak_of(write_jsonl(tmp_path / "with.jsonl", small + [huge]))
    assert without["kept"] == 200 and with_huge["kept"] == 200 and with_huge["dropped"] == 1
    # before: the whole 8 MB answer was tokenized (~1.8 GB more, 20+ s); now a 37k-character prefix
    assert with_huge["peak_kib"] <= 1.2 * without["peak_kib"], (without, with_huge)


# ---- 7: image bombs, directories, nesting ------------------------------------------------------
def test_a_decompression_bomb_and_a_directory_are_named_errors(tmp_path, tokenizer):
    bomb = png_header(tmp_path / "bomb.png", 20000, 20000)
    (tmp_path / "folder.png").mkdir()
    write_image(tmp_path / "ok.png")
    for name, message in (("bomb.png", r"image too large to decode safely \(Image size \(400000000 pixels\)"),
                          ("folder.png", "the image path is a directory, not an image file")):
        data = write_jsonl(tmp_path / f"{name}.jsonl", [record("fine", "<image>\nq", images=["ok.png"]),
                                                         record("bad", "<image>\nq", images=[name])])
        with pytest.raises(DataError, match=rf"{name}\.jsonl:2: {message}.*{name} \(sample bad\)"):
            build_conversations(None, native(data), [], on_missing_image="skip")  # neither is a missing file
    with pytest.raises(DataError, match=r"sample s1: .*bomb\.png: image too large"):
        load_image(str(bomb), "s1")  # while training, and in chat
    with pytest.raises(DataError, match=r"sample s1: image path is a directory"):
        load_image(str(tmp_path / "folder.png"), "s1")
    late = Conversation("s9", (str(bomb),), (Round("q", "a", 1),), source="d.jsonl:9")  # data.verify_images=false
    with pytest.raises(DataError, match=r"sample s9 \(d\.jsonl:9\): .*bomb\.png: image too large"):
        ConversationDataset([late], tokenizer, clip_image_processor(16), ChatTemplate())[0]
    kept, skipped = check_image_files([Conversation("x", (str(tmp_path / "ok.png"),), (Round("q", "a", 1),))], "error")
    assert len(kept) == 1 and skipped == 0


def test_brackets_nested_100000_deep_are_a_named_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    data = write_jsonl(tmp_path / "d.jsonl", [record("ok"), deep])
    with pytest.raises(DataError, match=r"d\.jsonl:2: JSON nested too deeply"):
        build_conversations(None, native(data), [])
    llava = write_jsonl(tmp_path / "l.jsonl", [{"id": "x"}, deep])
    with pytest.raises(DataError, match=r"l\.jsonl:2: JSON nested too deeply"):
        build_conversations(None, [{"format": "llava_json", "path": str(llava)}], [])
    with pytest.raises(DataError, match=r"l2\.json: JSON nested too deeply"):
        build_conversations(None, [{"format": "llava_json", "path": str(write_jsonl(tmp_path / "l2.json", [deep]))}], [])
    with pytest.raises(UsageError, match=r"script\.jsonl:1: JSON nested too deeply"):  # chat --script
        list(jsonl_records(write_jsonl(tmp_path / "script.jsonl", [deep]), UsageError))


# ---- 8: counted warnings -----------------------------------------------------------------------
def test_empty_questions_and_repeated_ids_are_counted_warnings(tmp_path, caplog):
    data = write_jsonl(tmp_path / "d.jsonl", [record("a"), record("b", question="  "), record("a"), record("c"),
                                              record("c"), record("c")])
    with caplog.at_level(logging.WARNING):
        built = build_conversations(None, native(data), [])
    assert len(built.train) == 6
    text = caplog.text
    assert "1 record(s) have a round with an empty question (first: " in text and "d.jsonl:2, sample b)" in text
    assert "2 record id(s) occur more than once (5 records in all; first: 'a', 2 times)" in text
