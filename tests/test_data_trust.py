"""Broken inputs in the reference layouts, written by each test: every one is an error naming the
raw file and record, or follows data.on_missing_image, or is dropped with a count and a log line;
caches follow their raw files."""

import base64
import io
import json
import logging
import os
import random

import pytest
from PIL import Image

from dsvl_exp.data.build import build_conversations
from dsvl_exp.data.checks import check_image_files
from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.formats import READERS
from dsvl_exp.data.template import ChatTemplate

from reference_fixtures import PredictableRandom, image_bytes, mimicit_base64, ocr_vqa, turn, write_image, write_json


def read(name, root, max_images=8, rng=None):
    return READERS[name](root, rng or PredictableRandom(), max_images, None)


def build(root, name, **kwargs):
    return build_conversations(None, [{"format": name}], [], data_path=str(root), **kwargs)


def touch_later(path):
    """A newer mtime even on coarse-grained file systems."""
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


# ---- Sparkles -----------------------------------------------------------------------------------
def sparkles_root(root, cc_dialogues, images=(14, 1417)):
    for image_id in images:
        write_image(root / f"SparklesDialogueCC/images/{image_id}.jpg")
    (root / "SparklesDialogueVG/images").mkdir(parents=True, exist_ok=True)
    write_json(root / "SparklesDialogueVG/annotations/SparklesDialogueVG.json", [])
    return write_json(root / "SparklesDialogueCC/annotations/SparklesDialogueCC.json", cc_dialogues)


def user(text, *images):
    return {"role": "user", "content": text, "images": [{"image_id": i} for i in images]}


def assistant(text):
    return {"role": "assistant", "content": text}


class StyleRandom(PredictableRandom):
    def __init__(self, style):
        super().__init__()
        self.style = style

    def choice(self, seq):
        return seq[self.style]


def test_sparkles_image_ids_never_match_inside_longer_ids(tmp_path):
    sparkles_root(tmp_path, [{"dialogue": [
        user("compare IMAGE#14 and IMAGE#1417.", 14, 1417), assistant("IMAGE#1417 is darker than IMAGE#14.")]}])
    expected = [("Compare image a and image b.", "Image b is darker than image a."),
                ("Compare image A and image B.", "Image B is darker than image A."),
                ("Compare the first image and the second image.", "The second image is darker than the first image.")]
    for style, (question, answer) in enumerate(expected):
        (conversation,) = read("sparkles_dialogue", tmp_path, rng=StyleRandom(style)).conversations
        assert (conversation.rounds[0].question, conversation.rounds[0].answer) == (question, answer)
    # no dialogue_id: the id names the dataset, subset and index, never a path
    assert conversation.id == "sparkles_dialogue:SparklesDialogueCC:0"


def test_sparkles_malformed_dialogues_fail_over_limit_ones_are_counted(tmp_path, caplog):
    raw = sparkles_root(tmp_path, [{"dialogue": [user("a", 14), assistant("b")]}, {"dialogue": [user("odd", 14)]}])
    with pytest.raises(DataError, match=r"SparklesDialogueCC\.json \[dialogue 1\]: odd number of turns \(1\)"):
        build(tmp_path, "sparkles_dialogue")
    write_json(raw, [{"dialogue": [user("a", 14), assistant("b")]}, {"dialogue": [assistant("b"), user("a", 14)]}])
    touch_later(raw)
    with pytest.raises(DataError, match=r"\[dialogue 1\]: turn 0 has role 'assistant', expected 'user'"):
        build(tmp_path, "sparkles_dialogue")
    write_json(raw, [{"dialogue": [user("a", 14), assistant("b")]}, {"dialogue": [user("two", 14, 1417), assistant("c")]}])
    touch_later(raw)  # the cache follows its raw file: the fixed file is read, not the stale error
    with caplog.at_level(logging.WARNING):
        built = build(tmp_path, "sparkles_dialogue", max_images_per_sample=1)
    assert [c.num_images for c in built.train] == [1] and built.dropped == {"over_image_limit": 1}
    assert "dropped 1 dialogue(s) with more than 1 images" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # warm cache: still counted and logged
        assert build(tmp_path, "sparkles_dialogue", max_images_per_sample=1).dropped == {"over_image_limit": 1}
    assert "dropped 1 dialogue(s)" in caplog.text


def test_sparkles_missing_image_follows_on_missing_image(tmp_path):
    sparkles_root(tmp_path, [{"dialogue": [user("a", 14), assistant("b")]}, {"dialogue": [user("gone", 999), assistant("c")]}])
    with pytest.raises(DataError, match=r"SparklesDialogueCC\.json \[dialogue 1\]: image file not found: .*999\.jpg"):
        build(tmp_path, "sparkles_dialogue")
    built = build(tmp_path, "sparkles_dialogue", on_missing_image="skip")
    assert len(built.train) == 1 and built.skipped_missing_image == 1


# ---- MIMIC-IT -----------------------------------------------------------------------------------
@pytest.mark.parametrize("subset", ["SD", "SN", "TVC", "VST"])
def test_mimicit_unknown_image_id_is_an_error_or_a_counted_skip(tmp_path, subset):
    mimicit_base64(tmp_path, subset)
    table = tmp_path / f"MIMIC-IT/{subset}.json"
    images = json.loads(table.read_text())
    del images[f"{subset}_IMG_3"]
    write_json(table, images)
    name = f"otter_mimicit_{subset.lower()}"
    with pytest.raises(DataError, match=rf"{subset}_instructions\.json \[{subset}_INS_3\]: image not found: image id "
                                        rf"'{subset}_IMG_3' of {subset}_INS_3 is not in .*{subset}\.json"):
        build(tmp_path, name)
    built = build(tmp_path, name, on_missing_image="skip")
    assert [c.num_images for c in built.train] == [2] and built.skipped_missing_image == 1  # never trains with 2 of 3


def test_mimicit_corrupt_base64_image_named_by_file_and_id_before_training(tmp_path):
    mimicit_base64(tmp_path, "SD")
    table = tmp_path / "MIMIC-IT/SD.json"
    images = json.loads(table.read_text())
    images["SD_IMG_2"] = base64.b64encode(b"not an image at all").decode()
    write_json(table, images)
    with pytest.raises(DataError, match=r"SD_instructions\.json \[SD_INS_\d\]: unreadable or corrupt image .*: "
                                        r"image id 'SD_IMG_2' in .*SD\.json"):
        build(tmp_path, "otter_mimicit_sd")


def test_mimicit_cache_follows_the_raw_file_and_errors_name_raw_file_and_key(tmp_path):
    mimicit_base64(tmp_path, "SD")
    raw = tmp_path / "MIMIC-IT/SD_instructions.json"
    data = json.loads(raw.read_text())
    data["data"]["SD_INS_3"]["answer"] = " "
    write_json(raw, data)
    with pytest.raises(DataError, match=r"SD_instructions\.json \[SD_INS_3\]\.answer\[0\]: empty or missing answer"):
        build(tmp_path, "otter_mimicit_sd")
    data["data"]["SD_INS_3"]["answer"] = "Three."
    write_json(raw, data)
    touch_later(raw)
    assert len(build(tmp_path, "otter_mimicit_sd").train) == 2
    record = json.loads((tmp_path / "MIMIC-IT/SD_instructions_merged.json.sources").read_text())
    assert list(record["sources"]) == [str(raw)]


# ---- OCR-VQA ------------------------------------------------------------------------------------
def test_ocr_vqa_missing_corrupt_placeholder_and_mismatched_records(tmp_path, caplog):
    ocr_vqa(tmp_path)  # b1 real, b2 a 1x1 placeholder
    raw = tmp_path / "OCR_VQA/dataset.json"
    records = json.loads(raw.read_text())
    records["b3"] = {"imageURL": "http://x/b3.jpg", "questions": ["Who?"], "answers": ["Me"]}
    write_json(raw, records)
    with pytest.raises(DataError, match=r"dataset\.json \[b3\]: image file not found: .*b3\.jpg"):
        build(tmp_path, "ocr_vqa")
    with caplog.at_level(logging.WARNING):
        built = build(tmp_path, "ocr_vqa", on_missing_image="skip")
    assert [c.id for c in built.train] == ["ocr_vqa:b1"] and built.skipped_missing_image == 1
    assert built.dropped == {"placeholder_images": 1} and "dropped 1 record(s) whose image is a <= 1x1 px placeholder" in caplog.text
    (tmp_path / "OCR_VQA/images/b3.jpg").write_bytes(image_bytes()[:20])  # header cut: unreadable
    with pytest.raises(DataError, match=r"dataset\.json \[b3\]: unreadable or corrupt image .*b3\.jpg \(sample ocr_vqa:b3\)"):
        build(tmp_path, "ocr_vqa")
    records["b4"] = {"imageURL": "http://x/b4.jpg", "questions": ["Who?", "When?"], "answers": ["Me"]}
    write_json(raw, records)
    touch_later(raw)
    with pytest.raises(DataError, match=r"dataset\.json \[b4\]: 'questions' and 'answers' must be non-empty lists of the same length"):
        build(tmp_path, "ocr_vqa")


# ---- images -------------------------------------------------------------------------------------
def test_verify_images_full_decodes_what_the_header_check_passes(tmp_path):
    noise = Image.frombytes("RGB", (96, 96), random.Random(0).randbytes(96 * 96 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, format="JPEG")
    whole = buffer.getvalue()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) * 2 // 3])  # cut inside the scan data
    write_image(tmp_path / "ok.jpg")
    samples = [Conversation(f"s{k}", (str(tmp_path / name),), (Round("q", "a", 1),), source=f"d.jsonl:{k + 1}")
               for k, name in enumerate(["ok.jpg", "cut.jpg"] * 40)]  # > 64 distinct? no: 2 distinct, serial path
    assert len(check_image_files(samples, "error", "header")[0]) == 80
    assert len(check_image_files(samples, "error", True)[0]) == 80  # true: an alias of header
    with pytest.raises(DataError, match=r"d\.jsonl:2: unreadable or corrupt image .*cut\.jpg \(sample s1\)"):
        check_image_files(samples, "error", "full")
    many = []
    for k in range(70):  # enough distinct images for the threaded path
        write_image(tmp_path / f"m{k}.jpg")
        many.append(Conversation(f"m{k}", (str(tmp_path / f"m{k}.jpg"),), (Round("q", "a", 1),)))
    many.append(samples[1])
    with pytest.raises(DataError, match=r"cut\.jpg \(sample s1\)"):
        check_image_files(many, "error", "full")
    with pytest.raises(DataError, match=r"data\.verify_images='deep'; choose one of header, full, false"):
        check_image_files(many, "error", "deep")


# ---- LLaVA layouts ------------------------------------------------------------------------------
def llava_root(root, detail, reasoning=(), dial=()):
    write_image(root / "coco/train2017/000000000042.jpg")
    write_json(root / "llava/detail_23k.json", list(detail))
    write_json(root / "llava/complex_reasoning_77k.json", list(reasoning))
    write_json(root / "llava/conversation_58k.json", list(dial))


def test_llava_readers_check_roles_and_unanswered_turns(tmp_path):
    good = {"id": "g", "image": "000000000042.jpg", "conversations": [turn("human", "<image>\nq"), turn("gpt", "a")]}
    gpt_first = {"id": "b", "image": "000000000042.jpg", "conversations": [turn("gpt", "a"), turn("human", "<image>\nq")]}
    llava_root(tmp_path, [good, gpt_first])
    with pytest.raises(DataError, match=r"detail_23k\.json\[1\]\.conversations\[0\]: turn 0 is from 'gpt', expected 'human'"):
        build(tmp_path, "llava")
    trailing = {"id": "t", "image": "000000000042.jpg", "conversations": [
        turn("human", "<image>\nq"), turn("gpt", "a"), turn("human", "and?")]}
    llava_root(tmp_path, [good], dial=[good, trailing])
    with pytest.raises(DataError, match=r"conversation_58k\.json\[1\]\.conversations\[2\]: the last human turn has no gpt answer"):
        build(tmp_path, "llava_dial")
    # the blend checks every llava conversation when its cache is built, not only the drawn ones
    write_json(tmp_path / "MIMIC-IT/CGD_instructions.json", {"data": {}})
    with pytest.raises(DataError, match=r"conversation_58k\.json\[1\]\.conversations\[2\]: the last human turn"):
        build(tmp_path, "llava_otter_blend")


def test_llava_json_reads_jsonl_and_says_what_it_expects(tmp_path):
    write_image(tmp_path / "a.jpg")
    records = [{"id": f"r{k}", "image": "a.jpg", "conversations": [turn("human", "<image>\nq"), turn("gpt", f"a{k}")]} for k in range(2)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "d.json").write_text(json.dumps(records))
    from_jsonl = READERS["llava_json"](tmp_path / "d.jsonl", random.Random(0), 8, None).conversations
    from_json = READERS["llava_json"](tmp_path / "d.json", random.Random(0), 8, None).conversations
    assert [c.rounds for c in from_jsonl] == [c.rounds for c in from_json] and from_jsonl[1].rounds[0].answer == "a1"
    (tmp_path / "bad.jsonl").write_text(json.dumps(records[0]) + "\n{oops\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON \(Expecting property name .* at column 2\).*expected a JSON list"):
        READERS["llava_json"](tmp_path / "bad.jsonl", random.Random(0), 8, None)
    (tmp_path / "bad.txt").write_text("id,image\n")
    with pytest.raises(DataError, match=r"bad\.txt: starts with 'i' but llava_json expects a JSON list .* or JSONL"):
        READERS["llava_json"](tmp_path / "bad.txt", random.Random(0), 8, None)


def test_native_json_error_reads_cleanly(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"id": "x", "rounds": [{"question": "unterminated}]}')
    with pytest.raises(DataError) as error:
        build_conversations(None, [{"format": "native", "path": str(tmp_path / "d.jsonl")}], [])
    assert "at at" not in str(error.value)
    assert "d.jsonl:1: malformed JSON (Unterminated string starting at column 37); fix or remove" in str(error.value)
