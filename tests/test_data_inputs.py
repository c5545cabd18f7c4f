"""LLaVA JSON and native base64 input, bad input of every kind, the cache, fingerprint and debug dump."""

import base64
import json
import multiprocessing
import random

import pytest

from dsvl_exp.data.build import build_conversations
from dsvl_exp.data.cache import cached_json
from dsvl_exp.data.debug_dump import dump_samples
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.fingerprint import data_fingerprint
from dsvl_exp.data.formats import READERS
from dsvl_exp.data.images import load_image
from dsvl_exp.data.template import DEFAULT_SYSTEM_PROMPT as SYSTEM
from dsvl_exp.data.template import ChatTemplate

from reference_fixtures import image_bytes, write_image, write_json, write_reference_root


def llava_record(images, turns, id="x"):
    return {"id": id, "image": images, "conversations": [{"from": s, "value": v} for s, v in turns]}


def read_llava(path, image_dir=None):
    return READERS["llava_json"](path, random.Random(0), 8, image_dir).conversations


def test_llava_json_single_and_multi_image_and_text_only(tmp_path):
    write_image(tmp_path / "img/a.jpg")
    write_image(tmp_path / "img/b.jpg")
    path = write_json(tmp_path / "d.json", [
        llava_record("img/a.jpg", [("human", "<image>\nWhat is it?"), ("gpt", "A square.")], "one"),
        llava_record(["img/a.jpg", "img/b.jpg"], [("human", "<image>\nFirst?"), ("gpt", "Red."),
                                                  ("human", "Second <image>"), ("gpt", "Blue.")], "two"),
        {"id": "text", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]},
    ])
    one, two, text = read_llava(path)
    assert one.images == (str(tmp_path / "img/a.jpg"),)
    assert ChatTemplate().render_conversation(two) == [
        (f"{SYSTEM}### Image 1:\n<image>\n\n### Question:\nFirst?\n\n### Answer:\n", "Red."),
        ("### Image 2:\n<image>\n\n### Question:\nSecond\n\n### Answer:\n", "Blue."),
    ]
    assert text.images == () and ChatTemplate().render_conversation(text)[0][0] == f"{SYSTEM}### Question:\nHi?\n\n### Answer:\n"
    moved = read_llava(path, image_dir=tmp_path / "elsewhere")
    assert moved[0].images == (str(tmp_path / "elsewhere/img/a.jpg"),)


def test_llava_json_errors_name_file_and_record(tmp_path):
    bad_count = write_json(tmp_path / "c.json", [llava_record(["a.jpg", "b.jpg"], [("human", "<image>\nq"), ("gpt", "a")])])
    with pytest.raises(DataError, match=r"c\.json\[0\]: 1 '<image>' placeholder\(s\) .* but 2 image\(s\)"):
        read_llava(bad_count)
    bad_roles = write_json(tmp_path / "r.json", [llava_record("a.jpg", [("gpt", "<image>\nq"), ("human", "a")])])
    with pytest.raises(DataError, match=r"r\.json\[0\]: conversations\[0\], \[1\] must be from 'human' then 'gpt'"):
        read_llava(bad_roles)
    empty = write_json(tmp_path / "e.json", [llava_record("a.jpg", [("human", "<image>\nq"), ("gpt", " ")])])
    with pytest.raises(DataError, match=r"e\.json\[0\]: conversations\[1\]\.value: empty or missing answer"):
        read_llava(empty)
    (tmp_path / "m.json").write_text('[{"id": 1,\n "image": oops}]')
    with pytest.raises(DataError, match=r"m\.json:2: malformed JSON"):
        read_llava(tmp_path / "m.json")


def test_native_base64_images_decode_lazily(tmp_path):
    data = base64.b64encode(image_bytes((0, 0, 255))).decode()
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"id": "b", "images": [f"base64:{data}"], "rounds": [{"question": "<image>\nColour?", "answer": "blue"}]}) + "\n")
    built = build_conversations(None, [{"format": "native", "path": str(path)}], [])
    (conversation,) = built.train
    assert conversation.images == (f"base64:{data}",)
    assert load_image(conversation.images[0], "b").getpixel((3, 3))[2] > 200


def native_file(tmp_path, records):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return [{"format": "native", "path": str(path)}]


def sample(id, images):
    return {"id": id, "images": images, "rounds": [{"question": "<image>\n" * len(images) + "q", "answer": "a"}]}


def test_missing_image_skip_counts_and_logs(tmp_path, caplog):
    write_image(tmp_path / "ok.png")
    spec = native_file(tmp_path, [sample("s1", ["ok.png"]), sample("s2", ["gone.png"]), sample("s3", ["ok.png"])])
    built = build_conversations(None, spec, [], on_missing_image="skip")
    assert sorted(c.id for c in built.train) == ["s1", "s3"]
    assert built.skipped_missing_image == 1
    assert "skipping (sample s2), image file not found" in caplog.text and "skipped 1 sample(s)" in caplog.text


def test_empty_dataset_after_filtering_fails(tmp_path):
    spec = native_file(tmp_path, [sample("s1", ["gone.png"])])
    with pytest.raises(DataError, match=r"no samples left after filtering \(1 read, 1 skipped for missing images\)"):
        build_conversations(None, spec, [], on_missing_image="skip")


def test_corrupt_image_fails_before_training(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"d\.jsonl:1: unreadable or corrupt image .*: .*bad\.png \(sample s1\)"):
        build_conversations(None, native_file(tmp_path, [sample("s1", ["bad.png"])]), [])
    lenient = build_conversations(None, native_file(tmp_path, [sample("s1", ["bad.png"])]), [], verify_images=False)
    with pytest.raises(DataError, match=r"sample s1: cannot read image .*bad\.png"):  # then it fails when loaded
        load_image(lenient.train[0].images[0], "s1")


def test_more_images_than_the_limit_fails(tmp_path):
    write_image(tmp_path / "a.png")
    spec = native_file(tmp_path, [sample("s1", ["a.png", "a.png", "a.png"])])
    with pytest.raises(DataError, match=r"sample s1 has 3 images, more than data.max_images_per_sample=2"):
        build_conversations(None, spec, [], max_images_per_sample=2)


def test_unknown_spec_key_and_missing_reference_files(tmp_path):
    with pytest.raises(DataError, match=r"unknown key\(s\) \['concat'\]"):
        build_conversations(None, [{"format": "native", "path": "x", "concat": 2}], [])
    with pytest.raises(DataError, match=r"has no path: set its path or data.data_path"):
        build_conversations(None, [{"format": "aokvqa"}], [])
    (tmp_path / "coco/train2017").mkdir(parents=True)
    with pytest.raises(DataError, match=r"aokvqa: annotation file .*aokvqa_v1p0_train\.json not found; download it from https://allenai"):
        build_conversations(None, [{"format": "aokvqa"}], [], data_path=str(tmp_path))
    with pytest.raises(DataError, match=r"llava: image directory .*coco/train2017 not found"):
        build_conversations(None, [{"format": "llava"}], [], data_path=str(tmp_path / "nowhere"))


def test_malformed_reference_json_names_file_and_line(tmp_path):
    root = write_reference_root(tmp_path)
    (root / "aokvqa/annotations/aokvqa_v1p0_train.json").write_text('[\n{"question": \n]')
    with pytest.raises(DataError, match=r"aokvqa_v1p0_train\.json:3: malformed JSON"):
        build_conversations(None, [{"format": "aokvqa"}], [], data_path=str(root))


def merge_once(root):
    return len(READERS["otter_mimicit_sn"](root, random.Random(0), 2, None).conversations)


def test_preprocessing_cache_is_atomic_under_concurrent_ranks(tmp_path):
    root = write_reference_root(tmp_path)
    with multiprocessing.get_context("fork").Pool(4) as pool:
        assert pool.map(merge_once, [root] * 4) == [1] * 4
    leftovers = [p.name for p in (root / "MIMIC-IT").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    cached = (root / "MIMIC-IT/SN_instructions_merged_filtered2.json").read_text()
    assert json.loads(cached)[0]["instruction"] == ["What changed?", "And then?"]
    calls = []
    assert cached_json(tmp_path / "c.json", lambda: calls.append(1) or {"a": 1}, "t") == {"a": 1}
    assert cached_json(tmp_path / "c.json", lambda: calls.append(1) or {"a": 2}, "t") == {"a": 1} and calls == [1]


def test_fingerprint_tracks_annotations_images_template_and_tokenizer(tmp_path, tokenizer):
    write_image(tmp_path / "a.png")
    spec = native_file(tmp_path, [sample("s1", ["a.png"])])
    built = build_conversations(None, spec, [])
    first = data_fingerprint(built.annotation_files, built.train, built.eval, ChatTemplate(), tokenizer)
    assert first == data_fingerprint(built.annotation_files, built.train, built.eval, ChatTemplate(), tokenizer)
    assert len(first["sha256"]) == 64 and str(tmp_path / "d.jsonl") in first["annotation_files"]
    other_template = data_fingerprint(built.annotation_files, built.train, built.eval, ChatTemplate(system_prompt=""), tokenizer)
    assert other_template["sha256"] != first["sha256"]
    (tmp_path / "d.jsonl").write_text((tmp_path / "d.jsonl").read_text().replace('"a"', '"b"'))
    changed = data_fingerprint(built.annotation_files, built.train, built.eval, ChatTemplate(), tokenizer)
    assert changed["annotation_files"] != first["annotation_files"] and changed["tokenizer"] == first["tokenizer"]


def test_debug_dump_writes_text_and_images(tmp_path):
    write_image(tmp_path / "a.png")
    built = build_conversations(None, native_file(tmp_path, [sample("s1", ["a.png"]), sample("s2", ["a.png", "a.png"])]), [])
    folder = dump_samples(built.train, ChatTemplate(), "</s>", 5, tmp_path / "run")
    names = sorted(p.name for p in folder.iterdir())
    assert [n for n in names if n.endswith(".txt")] == ["sample0.txt", "sample1.txt"]
    for k, conversation in enumerate(built.train):
        assert [n for n in names if n.startswith(f"sample{k}_")] == [f"sample{k}_image{i + 1}.png" for i in range(len(conversation.images))]
    text = (folder / "sample0.txt").read_text()
    assert text.endswith("### Question:\nq\n\n### Answer:\na</s>") and SYSTEM in text
