"""Each reference dataset adapter reads its real layout (tiny fixtures) and renders the exact
DeepSpeed-VisualChat template text."""

import json
import random

import pytest

from dsvl_exp.data.formats import READERS
from dsvl_exp.data.template import DEFAULT_SYSTEM_PROMPT as SYSTEM
from dsvl_exp.data.template import ChatTemplate

from reference_fixtures import PredictableRandom, write_reference_root

REFERENCE_NAMES = ["aokvqa", "coco_caption", "llava", "llava_dial", "llava_otter_blend", "minigpt4", "ocr_vqa",
                   "otter_mimicit_cgd", "otter_mimicit_sd", "otter_mimicit_sn", "otter_mimicit_tvc", "otter_mimicit_vst",
                   "sparkles_dialogue"]


def image_block(first, count):
    return "".join(f"### Image {first + i}:\n<image>\n" for i in range(count)) + ("\n" if count else "")


def prompt(question, images=0, first_image=1, system=False):
    return f"{SYSTEM if system else ''}{image_block(first_image, images)}### Question:\n{question}\n\n### Answer:\n"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_reference_root(tmp_path_factory.mktemp("reference"))


def read(name, root, max_images=8, rng=None):
    return READERS[name](root, rng or PredictableRandom(), max_images, None).conversations


def rendered(conversation):
    return ChatTemplate().render_conversation(conversation)


def test_all_thirteen_reference_datasets_are_registered():
    assert set(REFERENCE_NAMES) <= set(READERS)


def test_aokvqa_reason_prompt_and_rationale_answer(root):
    first, second = read("aokvqa", root)
    assert first.images == (str(root / "coco/train2017/000000000042.jpg"),)
    assert rendered(first) == [(prompt("What is the man holding? Why?", 1, system=True),
                                "The answer is a kite. Because It flies. It has a string.")]
    assert rendered(second)[0][1] == "The answer is winter. Because There is snow."


def test_coco_caption_random_caption_and_caption_prompt(root):
    (conversation,) = read("coco_caption", root)
    assert conversation.images == (str(root / "coco/2014/COCO_val2014_000000000007.jpg"),)
    assert rendered(conversation) == [(prompt("please describe the image", 1, system=True), "A dog on a sofa.")]


def test_minigpt4_caption(root):
    (conversation,) = read("minigpt4", root)
    assert conversation.images == (str(root / "cc_sbu_align/image/5.jpg"),)
    assert rendered(conversation) == [(prompt("please describe the image", 1, system=True), "A red car.")]


def test_llava_keeps_the_first_turn_only(root):
    detail, reasoning = read("llava", root)
    assert rendered(detail) == [(prompt("Describe the image.", 1, system=True), "A man with a kite.")]
    assert rendered(reasoning) == [(prompt("Why is he happy?", 1, system=True), "The wind is good.")]
    assert reasoning.images == (str(root / "coco/train2017/000000000043.jpg"),)


def test_llava_dial_keeps_every_turn_and_shows_the_image_once(root):
    (conversation,) = read("llava_dial", root)
    assert rendered(conversation) == [(prompt("What is he holding?", 1, system=True), "A kite."),
                                      (prompt("What colour is it?"), "Red.")]


def test_ocr_vqa_drops_1px_images_caches_and_draws_one_pair(root):
    (conversation,) = read("ocr_vqa", root)
    assert rendered(conversation) == [(prompt("What is the title?", 1, system=True), "Tales")]
    processed = json.loads((root / "OCR_VQA/dataset_processed.json").read_text())
    assert [r["filename"] for r in processed] == ["b1.jpg"]


def test_mimicit_cgd_merges_related_instructions_and_shuffles_rounds(root):
    conversations = read("otter_mimicit_cgd", root)
    merged = json.loads((root / "MIMIC-IT/CGD_instructions_merged.json").read_text())
    assert sorted(len(s["instruction"]) for s in merged) == [1, 2]  # INS_1 and INS_2 merged, each used once
    pair = next(c for c in conversations if len(c.rounds) == 2)
    assert pair.images == (str(root / "coco/train2017/000000000042.jpg"), str(root / "coco/train2017/000000000043.jpg"))
    sample = next(s for s in merged if len(s["instruction"]) == 2)
    by_question = {"<image>\nWhat differs?": ("What differs?", "The colour."), "Which is bigger?": ("Which is bigger?", "The first.")}
    (q1, a1), (q2, a2) = [by_question[q] for q in reversed(sample["instruction"])]  # PredictableRandom reverses
    assert rendered(pair) == [(prompt(q1, 2, system=True), a1), (prompt(q2), a2)]


def test_mimicit_sd_base64_images_all_in_the_first_round(root):
    conversations = read("otter_mimicit_sd", root)
    assert len(conversations) == 2 and (root / "MIMIC-IT/SD_instructions_merged.json").is_file()
    pair = next(c for c in conversations if len(c.rounds) == 2)
    table = json.loads((root / "MIMIC-IT/SD.json").read_text())
    assert pair.images == ("base64:" + table["SD_IMG_1"], "base64:" + table["SD_IMG_2"])
    assert rendered(pair) == [(prompt("And then?", 2, system=True), "He left."), (prompt("What changed?"), "A hat.")]
    three = next(c for c in conversations if len(c.rounds) == 1)
    assert three.num_images == 3


@pytest.mark.parametrize("subset", ["SN", "TVC", "VST"])
def test_mimicit_sn_tvc_vst_filter_by_image_count_per_limit(root, subset):
    name = f"otter_mimicit_{subset.lower()}"
    limited = read(name, root, max_images=2)
    assert [c.num_images for c in limited] == [2]
    assert (root / f"MIMIC-IT/{subset}_instructions_merged_filtered2.json").is_file()
    assert sorted(c.num_images for c in read(name, root, max_images=8)) == [2, 3]
    assert rendered(limited[0]) == [(prompt("And then?", 2, system=True), "He left."), (prompt("What changed?"), "A hat.")]


def test_mimicit_images_are_shared_not_copied(root):
    a, b = READERS["otter_mimicit_sd"](root, PredictableRandom(), 8, None).conversations
    assert a.images[0] is b.images[0]  # one string per image however many samples show it


def test_llava_otter_blend_llava_turns_then_cgd_rounds(root):
    (conversation,) = read("llava_otter_blend", root)  # the CGD sample whose first image lacks llava is dropped
    assert conversation.images == (str(root / "coco/train2017/000000000042.jpg"), str(root / "coco/train2017/000000000043.jpg"))
    assert rendered(conversation) == [
        (prompt("Describe the image.", 1, system=True), "A man with a kite."),
        (prompt("What is he holding?"), "A kite."),
        (prompt("What colour is it?"), "Red."),
        (prompt("Why is he happy?", 1, first_image=2), "The wind is good."),
        (prompt("Anything else?"), "No."),
        (prompt("What differs?"), "The colour."),
        (prompt("Which is bigger?"), "The first."),
    ]
    by_image = json.loads((root / "LlavaOtterBlendDataset_instructions_llava.json").read_text())
    assert sorted(by_image) == ["000000000042.jpg", "000000000043.jpg"] and len(by_image["000000000042.jpg"]) == 2


def test_sparkles_filters_then_tags_images_and_recapitalises(root):
    (conversation,) = read("sparkles_dialogue", root)
    assert len(json.loads((root / "SparklesDialogue.json").read_text())) == 1  # the 9-image dialogue dropped
    assert conversation.images == (str(root / "SparklesDialogueCC/images/101.jpg"), str(root / "SparklesDialogueCC/images/102.jpg"))
    assert rendered(conversation) == [
        (prompt("What is in image a?", 1, system=True), "A cat is in image a. It sleeps."),
        (prompt("Compare image a withimage b", 1, first_image=2), "Image b shows a dog."),
    ]


def test_sparkles_tag_styles_and_seeded_randomness(root):
    styles = set()
    for seed in range(12):
        (conversation,) = read("sparkles_dialogue", root, rng=random.Random(seed))
        styles.add(conversation.rounds[1].question)
    assert styles == {"Compare image a withimage b", "Compare image A withimage B", "Compare the first image withthe second image"}
    again = [read("coco_caption", root, rng=random.Random(5))[0].rounds for _ in range(2)]
    assert again[0] == again[1]
