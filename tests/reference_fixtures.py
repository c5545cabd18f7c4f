"""Tiny copies of the reference datasets' real file layouts, written under one data root.

A few records each, 8x8 images. The records are chosen so every rule of each adapter shows up
(filters that drop a record, rounds without images, merged instruction groups, base64 images).
"""

from __future__ import annotations

import base64
import io
import json
import random
from pathlib import Path

from PIL import Image


class PredictableRandom(random.Random):
    """An rng whose draws are known in advance: choice -> first, randint -> upper bound,
    randrange(n) -> n-1, sample -> the first k, shuffle -> reversed order."""

    def choice(self, seq):
        return seq[0]

    def randint(self, a, b):
        return b

    def randrange(self, start, stop=None, step=1):
        return (stop if stop is not None else start) - 1

    def sample(self, population, k, **_):
        return list(population)[:k]

    def shuffle(self, x):
        x.reverse()


def image_bytes(colour=(200, 30, 30), size=8, fmt="JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def write_image(path: Path, colour=(200, 30, 30), size=8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(colour, size, "PNG" if path.suffix in (".png", ".gif") else "JPEG"))
    return path


def write_json(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def turn(speaker: str, text: str) -> dict:
    return {"from": speaker, "value": text}


def coco(root: Path) -> None:
    for image_id in (42, 43, 44):
        write_image(root / f"coco/train2017/{image_id:012d}.jpg")
    write_image(root / "coco/2014/COCO_val2014_000000000007.jpg")


def aokvqa(root: Path) -> None:
    write_json(root / "aokvqa/annotations/aokvqa_v1p0_train.json", [
        {"question_id": "q1", "image_id": 42, "question": "What is the man holding?",
         "choices": ["a bat", "a kite", "a cup", "a ball"], "correct_choice_idx": 1,
         "rationales": ["It flies.", "It has a string."]},
        {"question_id": "q2", "image_id": 43, "question": "What season is it?",
         "choices": ["winter", "summer"], "correct_choice_idx": 0, "rationales": ["There is snow."]},
    ])


def coco_caption(root: Path) -> None:
    write_json(root / "coco_caption/dataset.json", {"images": [
        {"filepath": "val2014", "filename": "COCO_val2014_000000000007.jpg", "imgid": 7, "split": "train",
         "sentences": [{"raw": "A dog on a sofa."}, {"raw": "A brown dog."}]},
    ]})


def minigpt4(root: Path) -> None:
    write_image(root / "cc_sbu_align/image/5.jpg")
    write_json(root / "cc_sbu_align/filter_cap.json", {"annotations": [{"image_id": "5", "caption": "A red car."}]})


def llava(root: Path) -> None:
    write_json(root / "llava/detail_23k.json", [
        {"id": "d1", "image": "000000000042.jpg", "conversations": [turn("human", "<image>\nDescribe the image."), turn("gpt", "A man with a kite.")]},
    ])
    write_json(root / "llava/complex_reasoning_77k.json", [
        {"id": "c1", "image": "000000000043.jpg", "conversations": [
            turn("human", "Why is he happy?\n<image>"), turn("gpt", "The wind is good."),
            turn("human", "Anything else?"), turn("gpt", "No.")]},
    ])
    write_json(root / "llava/conversation_58k.json", [
        {"id": "v1", "image": "000000000042.jpg", "conversations": [
            turn("human", "What is he holding?\n<image>"), turn("gpt", "A kite."),
            turn("human", "What colour is it?"), turn("gpt", "Red.")]},
    ])


def ocr_vqa(root: Path) -> None:
    write_image(root / "OCR_VQA/images/b1.jpg")
    write_image(root / "OCR_VQA/images/b2.gif", size=1)  # a dead-link placeholder: dropped
    write_json(root / "OCR_VQA/dataset.json", {
        "b1": {"imageURL": "http://images/b1.jpg", "questions": ["Who wrote this book?", "What is the title?"], "answers": ["Ann Lee", "Tales"]},
        "b2": {"imageURL": "http://images/b2.gif", "questions": ["Who wrote this book?"], "answers": ["Nobody"]},
    })


def mimicit_cgd(root: Path) -> None:
    ids = ["CGD_IMG_000000000042", "CGD_IMG_000000000043"]
    write_json(root / "MIMIC-IT/CGD_instructions.json", {"meta": {}, "data": {
        "CGD_INS_1": {"instruction": "<image>\nWhat differs?", "answer": "The colour.", "image_ids": ids, "rel_ins_ids": ["CGD_INS_2"]},
        "CGD_INS_2": {"instruction": "Which is bigger?", "answer": "The first.", "image_ids": ids, "rel_ins_ids": ["CGD_INS_1"]},
        # image 44 has no llava conversation: llava_otter_blend drops this one
        "CGD_INS_3": {"instruction": "Same place?", "answer": "Yes.", "image_ids": ["CGD_IMG_000000000044", "CGD_IMG_000000000042"], "rel_ins_ids": []},
    }})


def base64_image(colour) -> str:
    return base64.b64encode(image_bytes(colour)).decode()


def mimicit_base64(root: Path, subset: str) -> None:
    p = subset + "_IMG_"
    write_json(root / f"MIMIC-IT/{subset}.json", {f"{p}1": base64_image((255, 0, 0)), f"{p}2": base64_image((0, 255, 0)),
                                                    f"{p}3": base64_image((0, 0, 255))})
    write_json(root / f"MIMIC-IT/{subset}_instructions.json", {"meta": {}, "data": {
        f"{subset}_INS_1": {"instruction": "What changed?", "answer": "A hat.", "image_ids": [f"{p}1", f"{p}2"], "rel_ins_ids": [f"{subset}_INS_2"]},
        f"{subset}_INS_2": {"instruction": "And then?", "answer": "He left.", "image_ids": [f"{p}1", f"{p}2"], "rel_ins_ids": []},
        # three images: over a limit of 2, so the SN/TVC/VST filter drops it at max_images=2
        f"{subset}_INS_3": {"instruction": "Count them.", "answer": "Three.", "image_ids": [f"{p}1", f"{p}2", f"{p}3"], "rel_ins_ids": []},
    }})


def sparkles(root: Path) -> None:
    for image_id in (101, 102):
        write_image(root / f"SparklesDialogueCC/images/{image_id}.jpg")
    (root / "SparklesDialogueVG/images").mkdir(parents=True, exist_ok=True)
    write_json(root / "SparklesDialogueCC/annotations/SparklesDialogueCC.json", [
        {"dialogue_id": "d1", "dialogue": [
            {"role": "user", "content": "what is in IMAGE#101?<Img><ImageHere></Img>", "images": [{"image_id": 101}]},
            {"role": "assistant", "content": "a cat is in IMAGE#101. it sleeps."},
            {"role": "user", "content": "Compare IMAGE#101 with\nIMAGE#102<Img><ImageHere></Img>", "images": [{"image_id": 102}]},
            {"role": "assistant", "content": "IMAGE#102 shows a dog."}]},
        # nine images: over the reference's limit of 8, dropped (counted and logged)
        {"dialogue_id": "many", "dialogue": [
            {"role": "user", "content": "Look.", "images": [{"image_id": 101}] * 9}, {"role": "assistant", "content": "Many."}]},
    ])
    write_json(root / "SparklesDialogueVG/annotations/SparklesDialogueVG.json", [])


def write_reference_root(root: Path) -> Path:
    """All 13 reference datasets under one data root (they share the COCO images)."""
    coco(root)
    aokvqa(root)
    coco_caption(root)
    minigpt4(root)
    llava(root)
    ocr_vqa(root)
    mimicit_cgd(root)
    for subset in ("SD", "SN", "TVC", "VST"):
        mimicit_base64(root, subset)
    sparkles(root)
    return root
