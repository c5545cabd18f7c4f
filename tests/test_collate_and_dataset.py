import torch

from dsvl_exp.data.collate import DataCollator
from dsvl_exp.data.dataset import ConversationDataset
from dsvl_exp.data.formats.native import read_native_jsonl
from dsvl_exp.data.synthetic import ensure_shapes_dataset
from dsvl_exp.data.template import IGNORE_INDEX, ChatTemplate
from dsvl_exp.models.vision import clip_image_processor


def test_synthetic_data_is_deterministic_and_atomic(tmp_path):
    a = ensure_shapes_dataset(str(tmp_path / "a"), num_train=20, num_eval=5, image_size=16, seed=3)
    b = ensure_shapes_dataset(str(tmp_path / "b"), num_train=20, num_eval=5, image_size=16, seed=3)
    assert (a / "train.jsonl").read_text() == (b / "train.jsonl").read_text()
    assert (a / "images" / "train-000000_0.png").read_bytes() == (b / "images" / "train-000000_0.png").read_bytes()
    assert not [p for p in a.parent.iterdir() if p.name.startswith(".")]  # no staging dir left behind
    conversations = read_native_jsonl(a / "train.jsonl")
    assert len(conversations) == 20
    assert all(1 <= c.num_images <= 3 and c.rounds[0].num_images >= 1 for c in conversations)


def test_collator_pads_right_to_multiple_of_8_and_stacks_images(tmp_path, tokenizer):
    root = ensure_shapes_dataset(str(tmp_path), num_train=6, num_eval=2, image_size=16, seed=0)
    dataset = ConversationDataset(read_native_jsonl(root / "train.jsonl"), tokenizer, clip_image_processor(16), ChatTemplate())
    samples = [dataset[i] for i in range(3)]
    batch = DataCollator(tokenizer.pad_token_id)(samples)
    lengths = [len(s["input_ids"]) for s in samples]
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] >= max(lengths)
    assert batch["image_num"] == [s["images"].shape[0] for s in samples]
    assert batch["images"].shape == (sum(batch["image_num"]), 3, 16, 16)
    for row, n in enumerate(lengths):
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert torch.all(batch["input_ids"][row, n:] == tokenizer.pad_token_id)
        assert torch.all(batch["labels"][row, n:] == IGNORE_INDEX)
