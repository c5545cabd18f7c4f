import json

import pytest

from dsvl_exp.data.build import build_conversations
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.formats.native import read_native_jsonl
from dsvl_exp.data.images import load_image


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def png(path):
    from PIL import Image

    Image.new("RGB", (8, 8), (255, 0, 0)).save(path)
    return path


def test_reads_images_rounds_and_text_only_rounds(tmp_path):
    png(tmp_path / "a.png")
    png(tmp_path / "b.png")
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"id": "x", "images": ["a.png", "b.png"], "rounds": [
            {"question": "<image>\nWhat is this?", "answer": "A square."},
            {"question": "And now?", "answer": "Still a square."},
            {"question": "<image>\nCompare.", "answer": "Same."}]},
        {"id": "text-only", "rounds": [{"question": "Hi?", "answer": "Hello."}]},
    ])
    first, text_only = read_native_jsonl(path)
    assert first.images == (str(tmp_path / "a.png"), str(tmp_path / "b.png"))
    assert [r.num_images for r in first.rounds] == [1, 0, 1]
    assert first.rounds[0].question == "What is this?"
    assert text_only.images == () and text_only.num_images == 0


def test_malformed_json_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"rounds": [{"question": "q", "answer": "a"}]}, '{"rounds": [oops'])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON"):
        read_native_jsonl(path)


def test_image_placeholder_count_must_match(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "s1", "images": ["a.png", "b.png"], "rounds": [{"question": "<image>\nq", "answer": "a"}]}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: 1 '<image>' placeholder\(s\) .* but 2 image\(s\)"):
        read_native_jsonl(path)


def test_empty_answer_is_rejected(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"rounds": [{"question": "q", "answer": "  "}]}])
    with pytest.raises(DataError, match=r"rounds\[0\]\.answer is empty"):
        read_native_jsonl(path)


def test_missing_image_fails_before_training_and_names_sample_and_path(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "s9", "images": ["nope.png"], "rounds": [{"question": "<image>\nq", "answer": "a"}]}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: image file not found: .*nope\.png"):
        build_conversations(None, [{"format": "native", "path": str(path)}], [])


def test_corrupt_image_names_the_sample(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"sample s3: cannot read image .*bad\.png"):
        load_image(str(bad), "s3")


def test_unknown_format_lists_known_ones(tmp_path):
    with pytest.raises(DataError, match=r"unknown data format 'parquet'") as error:
        build_conversations(None, [{"format": "parquet", "path": "x"}], [])
    for known in ("native", "llava_json", "aokvqa", "otter_mimicit_vst", "sparkles_dialogue"):
        assert f"'{known}'" in str(error.value)
