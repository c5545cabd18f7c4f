"""The model as a transformers model: Auto classes from an export folder, the processor's chat
template against training's, and `generate` (greedy parity with the reference-input path, KV
cache, batching with different image counts, beam search, stop strings, streamer)."""

import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import build_tiny_model
from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.data.template import ChatTemplate, tokenize_conversation, tokenize_generation_prompt

REFERENCE_SYSTEM = ChatTemplate().system_prompt


def picture(seed: int, size: int = 40) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255).astype("uint8"))


def messages_of(conversation: Conversation, system: str | None, answered_rounds: int) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    for index, round_ in enumerate(conversation.rounds):
        content = [{"type": "image"}] * round_.num_images + [{"type": "text", "text": round_.question}]
        messages.append({"role": "user", "content": content})
        if index < answered_rounds:
            messages.append({"role": "assistant", "content": round_.answer})
    return messages


CONVERSATION = Conversation(id="c", images=("a", "b", "c"), rounds=(
    Round(question="Compare image 1 and image 2.", answer="The first is red; the second is blue.", num_images=2),
    Round(question="And now?", answer="A circle.", num_images=0),
    Round(question="What is in image 3?", answer="Three squares, side by side.", num_images=1),
))


@pytest.fixture(scope="module")
def processor(tokenizer):
    from dsvl_exp.models.processing import DSVLProcessor
    from dsvl_exp.models.vision import clip_image_processor

    return DSVLProcessor(image_processor=clip_image_processor(32), tokenizer=tokenizer, tokens_per_image=1)


@pytest.mark.parametrize("system", [None, REFERENCE_SYSTEM, "Be brief.\n\n"])
def test_chat_template_ids_equal_the_training_template(tokenizer, processor, system):
    template = ChatTemplate(system_prompt=REFERENCE_SYSTEM if system is None else system)
    expected, _ = tokenize_conversation(tokenizer, template, CONVERSATION)
    rendered = processor.apply_chat_template(messages_of(CONVERSATION, system, answered_rounds=3))
    assert rendered.count("### Image 3:\n<image>\n") == 1
    images = [picture(i) for i in range(3)]
    assert processor(text=rendered, images=images)["input_ids"][0].tolist() == expected
    for round_index in range(3):  # generation prompts: history with answers, then the open question
        expected = tokenize_generation_prompt(tokenizer, template, CONVERSATION, round_index)
        messages = messages_of(Conversation("c", CONVERSATION.images, CONVERSATION.rounds[:round_index + 1]), system,
                               answered_rounds=round_index)
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        count = sum(r.num_images for r in CONVERSATION.rounds[:round_index + 1])
        assert processor(text=prompt, images=images[:count])["input_ids"][0].tolist() == expected


def test_processor_expands_placeholders_and_refuses_a_count_mismatch(tokenizer):
    from dsvl_exp.models.processing import DSVLProcessor
    from dsvl_exp.models.vision import clip_image_processor

    processor = DSVLProcessor(image_processor=clip_image_processor(32), tokenizer=tokenizer, tokens_per_image=5)
    inputs = processor(text=["<image> one", "two <image><image> x y z w"], images=[[picture(0)], [picture(1), picture(2)]])
    assert inputs["pixel_values"].shape == (3, 3, 32, 32)
    assert inputs["mm_token_type_ids"].sum(dim=1).tolist() == [5, 10]
    assert inputs["attention_mask"][0, 0] == 0 and inputs["attention_mask"][1].all()  # left padding
    with pytest.raises(ValueError, match="2 <image> placeholder"):
        processor(text="<image><image>", images=[picture(0)])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer):
    """One export folder per attention, with the in-memory model it came from."""
    folders = {}
    for attention in ("causal", "mmca", "mmca_legacy"):
        model = build_tiny_model(tokenizer, attention=attention, seed=3).eval()
        folder = tmp_path_factory.mktemp(attention)
        model.save_pretrained(folder, tokenizer=tokenizer)
        folders[attention] = (folder, model)
    return folders


PROMPTS = [(2, "Compare image 1 and image 2."), (0, "Say something."), (1, "What is in image 1?")]


def reference_inputs(tokenizer, prompts):
    from dsvl_exp.data.collate import left_padded

    ids = []
    for number, question in prompts:
        conversation = Conversation("c", tuple("x" * number), (Round(question, "", number),))
        ids.append(tokenize_generation_prompt(tokenizer, ChatTemplate(), conversation, 0))
    return left_padded(ids, tokenizer.pad_token_id)


@pytest.mark.parametrize("attention", ["causal", "mmca", "mmca_legacy"])
def test_auto_classes_greedy_ids_equal_the_project_path(exported, tokenizer, attention):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, project_model = exported[attention]
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__name__ == "DSVLForConditionalGeneration" and type(model) is not type(project_model)
    images = [picture(i) for i in range(3)]
    pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    # mmca_legacy's leak reaches padding keys: compare it one conversation at a time, as the reference decodes
    batches = [PROMPTS] if attention != "mmca_legacy" else [[p] for p in PROMPTS]
    start = 0
    for prompts in batches:
        count = sum(n for n, _ in prompts)
        input_ids, attention_mask = reference_inputs(tokenizer, prompts)
        expected = project_model.generate(pixel_values[start:start + count], input_ids, attention_mask,
                                          [n for n, _ in prompts], max_new_tokens=8)
        texts = [processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}] * n + [{"type": "text", "text": q}]}],
            add_generation_prompt=True) for n, q in prompts]
        inputs = processor(text=texts, images=images[start:start + count])
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        got = [row[: row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row
               for row in output[:, inputs["input_ids"].shape[1]:].tolist()]
        got = [[t for t in row if t != tokenizer.pad_token_id] for row in got]
        assert got == expected
        start += count


def test_qwen_tower_export_loads_with_the_auto_classes(tmp_path, tokenizer):
    from transformers import AutoModelForImageTextToText

    from test_model_family import build

    model = build(tokenizer, vision="qwen", attention="mmca").eval()
    model.save_pretrained(tmp_path, tokenizer=tokenizer)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert type(loaded.vision).__name__ == "QwenVisionTower"
    ids = torch.tensor([[tokenizer.bos_token_id, 50, tokenizer.convert_tokens_to_ids("<image>"), 30]])
    images = torch.randn(1, 3, 32, 32)
    assert (loaded.generate(images, ids, torch.ones_like(ids), [1], max_new_tokens=6)
            == model.generate(images, ids, torch.ones_like(ids), [1], max_new_tokens=6))


@pytest.mark.parametrize("attention", ["causal", "mmca"])
def test_generate_with_and_without_kv_cache_gives_the_same_tokens(tokenizer, processor, attention):
    model = build_tiny_model(tokenizer, attention=attention, seed=5).eval()
    model.generation_config.eos_token_id = None  # compare every step
    processor.tokens_per_image = model.tokens_per_image
    inputs = processor(text=["<image> a b", "c <image> d <image> e f g"], images=[picture(0), picture(1), picture(2)])
    cached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape[1] == inputs["input_ids"].shape[1] + 6
    assert torch.equal(cached, uncached)
    processor.tokens_per_image = 1


@pytest.mark.parametrize("attention", ["causal", "mmca"])
def test_batched_left_padded_prompts_with_different_image_counts_equal_one_at_a_time(tokenizer, processor, attention):
    model = build_tiny_model(tokenizer, attention=attention, seed=5).eval()
    model.generation_config.eos_token_id = None
    processor.tokens_per_image = model.tokens_per_image
    texts, images = ["<image><image> two", "none at all here", "<image> one"], [[picture(0), picture(1)], [], [picture(2)]]
    batched = model.generate(**processor(text=texts, images=images), max_new_tokens=5, do_sample=False)[:, -5:]
    for row, (text, own) in enumerate(zip(texts, images)):
        single = model.generate(**processor(text=text, images=own), max_new_tokens=5, do_sample=False)[:, -5:]
        assert torch.equal(batched[row:row + 1], single), row
    processor.tokens_per_image = 1


def test_beam_search_sampling_penalty_stop_strings_and_streamer(tokenizer, processor):
    from transformers import TextIteratorStreamer

    model = build_tiny_model(tokenizer, attention="mmca", seed=5).eval()
    model.generation_config.eos_token_id = None
    processor.tokens_per_image = model.tokens_per_image
    inputs = processor(text=["<image> a b", "c <image> d <image> e f"], images=[picture(0), picture(1), picture(2)])
    length = inputs["input_ids"].shape[1]
    beams = model.generate(**inputs, max_new_tokens=4, num_beams=3, do_sample=False)
    assert beams.shape == (2, length + 4)
    torch.manual_seed(0)
    sampled = model.generate(**inputs, max_new_tokens=4, do_sample=True, temperature=0.7, top_p=0.9, top_k=20,
                             repetition_penalty=1.3)
    assert sampled.shape == (2, length + 4)
    single = processor(text="<image> a b", images=[picture(0)])
    length = single["input_ids"].shape[1]
    greedy = model.generate(**single, max_new_tokens=8, do_sample=False)[0, length:].tolist()
    stop = tokenizer.decode(greedy[1:3])  # the text of the 2nd and 3rd tokens: generation stops after the 3rd
    stopped = model.generate(**single, max_new_tokens=8, do_sample=False, stop_strings=[stop], tokenizer=tokenizer)
    assert stopped[0, length:].tolist() == greedy[:3]
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    thread = threading.Thread(target=model.generate, kwargs={**single, "max_new_tokens": 5, "streamer": streamer})
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    expected = model.generate(**single, max_new_tokens=5)[0, single["input_ids"].shape[1]:]
    assert streamed == tokenizer.decode(expected)
    processor.tokens_per_image = 1


def test_model_is_a_transformers_model_and_keeps_its_old_name(tokenizer):
    from transformers import GenerationMixin, PreTrainedModel

    from dsvl_exp import DSVLModel
    from dsvl_exp.models.dsvl import DSVLForConditionalGeneration

    assert DSVLModel is DSVLForConditionalGeneration
    model = build_tiny_model(tokenizer)
    assert isinstance(model, PreTrainedModel) and isinstance(model, GenerationMixin)
    rebuilt = DSVLModel(model.config)  # from its config alone: same architecture
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


V1_KEYS = ("vision", "projection", "decoder", "attention", "image_order", "image_token_id", "pad_token_id", "eos_token_id",
           "tokens_per_image", "pad_to_multiple_of", "dtype", "adapters", "model_type")


def as_format_1(folder):
    """Turn an export folder into what dsvl_exp wrote before the transformers model class."""
    import json

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**{k: config[k] for k in V1_KEYS}, "format_version": 1}))
    for path in [*folder.glob("*.py"), folder / "processor_config.json", folder / "chat_template.jinja"]:
        path.unlink()


def test_format_1_folders_load_and_upgrade_with_one_command(tmp_path, tokenizer, caplog):
    from transformers import AutoModelForImageTextToText

    from dsvl_exp import DSVLModel
    from dsvl_exp.export import main as export_main

    model = build_tiny_model(tokenizer, attention="mmca", seed=3).eval()
    old = tmp_path / "old"
    model.save_pretrained(old, tokenizer=tokenizer)
    as_format_1(old)
    images, ids = torch.randn(1, 3, 32, 32), torch.tensor([[tokenizer.bos_token_id, 50, tokenizer.convert_tokens_to_ids("<image>"), 30]])
    expected = model.generate(images, ids, torch.ones_like(ids), [1], max_new_tokens=6)
    with caplog.at_level("WARNING"):
        loaded = DSVLModel.from_pretrained(old)
    assert "format 1" in caplog.text and "python -m dsvl_exp.export" in caplog.text
    assert loaded.generate(images, ids, torch.ones_like(ids), [1], max_new_tokens=6) == expected
    new = tmp_path / "new"
    assert export_main([str(old), "--out", str(new)]) == 0
    upgraded = AutoModelForImageTextToText.from_pretrained(new, trust_remote_code=True).eval()
    assert upgraded.generate(images, ids, torch.ones_like(ids), [1], max_new_tokens=6) == expected


def test_the_code_that_travels_imports_only_torch_and_transformers():
    """What transformers checks before running a folder's code: every file's imports (relative
    ones travel with it). The fresh-venv test (make test-fresh-venv) runs it for real."""
    from transformers.dynamic_module_utils import get_imports

    from dsvl_exp.models.pretrained import model_code_files

    files = model_code_files()
    assert {f.name for f in files} >= {"dsvl.py", "config.py", "processing.py", "mmca.py", "splice.py", "vocabulary.py"}
    for path in files:
        third_party = set(get_imports(path)) - set(sys.stdlib_module_names)
        # safetensors comes with transformers; qwen_vit.py's deepspeed import sits in the ZeRO-3
        # loader of pretrained tower weights, which only training calls
        allowed = {"torch", "transformers", "safetensors"} | ({"deepspeed"} if path.name == "qwen_vit.py" else set())
        assert third_party <= allowed, path.name
