import pytest
import torch

from dsvl_exp.data.template import IGNORE_INDEX
from dsvl_exp.models.splice import IMAGE, TEXT, splice_images

IMG = 99
PAD = 0


def make_inputs():
    # sample 0: t t IMG t IMG t   (2 images)   sample 1: t IMG t pad pad pad (1 image)
    input_ids = torch.tensor([[5, 6, IMG, 7, IMG, 8], [9, IMG, 10, PAD, PAD, PAD]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 7, IGNORE_INDEX, 8], [IGNORE_INDEX, IGNORE_INDEX, 10, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])
    # text embedding of token t = [t, t]; image k has 3 tokens of value 100*(k+1) + j
    text_embeds = input_ids[..., None].float().expand(-1, -1, 2).clone()
    images = torch.stack([torch.full((3, 2), 100.0 * (k + 1)) + torch.arange(3.0)[:, None] for k in range(3)])
    return input_ids, attention_mask, labels, text_embeds, images


def test_images_replace_placeholders_in_document_order():
    input_ids, attention_mask, labels, text_embeds, images = make_inputs()
    out = splice_images(text_embeds, input_ids, attention_mask, images, [2, 1], IMG, torch.full((2,), -1.0), labels=labels, pad_to_multiple_of=8)
    assert out.embeds.shape == (2, 16, 2)  # sample 0: 4 text + 2*3 image = 10 -> rounded to 16
    row0 = out.embeds[0, :, 0].tolist()
    assert row0[:10] == [5, 6, 100, 101, 102, 7, 200, 201, 202, 8]
    assert row0[10:] == [-1] * 6  # pad embedding
    assert out.token_types[0].tolist() == [TEXT, TEXT, IMAGE, IMAGE, IMAGE, TEXT, IMAGE, IMAGE, IMAGE, TEXT] + [0] * 6
    assert out.labels[0].tolist() == [IGNORE_INDEX] * 5 + [7] + [IGNORE_INDEX] * 3 + [8] + [IGNORE_INDEX] * 6
    row1 = out.embeds[1, :5, 0].tolist()
    assert row1 == [9, 300, 301, 302, 10]
    assert out.token_types[1].tolist() == [TEXT, IMAGE, IMAGE, IMAGE, TEXT] + [0] * 11
    assert out.position_ids[0, :10].tolist() == list(range(10))


def test_reversed_legacy_reproduces_the_reference_order():
    input_ids, attention_mask, labels, text_embeds, images = make_inputs()
    out = splice_images(text_embeds, input_ids, attention_mask, images, [2, 1], IMG, torch.zeros(2), image_order="reversed_legacy")
    assert out.embeds[0, :10, 0].tolist() == [5, 6, 200, 201, 202, 7, 100, 101, 102, 8]
    assert out.embeds[1, 1, 0].item() == 300  # a single image is unaffected


def test_left_padding_aligns_sequences_to_the_right():
    input_ids = torch.tensor([[PAD, PAD, 5, IMG, 6], [7, IMG, 8, IMG, 9]])
    attention_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    text_embeds = input_ids[..., None].float()
    images = torch.arange(3 * 2, dtype=torch.float).view(3, 2, 1) + 100
    out = splice_images(text_embeds, input_ids, attention_mask, images, [1, 2], IMG, torch.zeros(1), padding_side="left")
    assert out.embeds.shape[1] == 7
    assert out.embeds[0, :, 0].tolist() == [0, 0, 0, 5, 100, 101, 6]
    assert out.token_types[0].tolist() == [0, 0, 0, TEXT, IMAGE, IMAGE, TEXT]
    assert out.position_ids[0, 3:].tolist() == [0, 1, 2, 3]
    assert out.embeds[1, :, 0].tolist() == [7, 102, 103, 8, 104, 105, 9]


def test_wrong_image_count_is_a_clear_error():
    input_ids, attention_mask, labels, text_embeds, images = make_inputs()
    with pytest.raises(ValueError, match=r"<image> tokens per sample \[2, 1\] do not match image_num \[1, 2\]"):
        splice_images(text_embeds, input_ids, attention_mask, images, [1, 2], IMG, torch.zeros(2))


def test_gradients_reach_text_and_image_embeddings():
    input_ids, attention_mask, labels, text_embeds, images = make_inputs()
    text_embeds.requires_grad_(True)
    images.requires_grad_(True)
    out = splice_images(text_embeds, input_ids, attention_mask, images, [2, 1], IMG, torch.zeros(2))
    out.embeds.sum().backward()
    assert torch.all(images.grad == 1)
    expected = (attention_mask.bool() & (input_ids != IMG)).float()
    assert torch.equal(text_embeds.grad[..., 0], expected)
