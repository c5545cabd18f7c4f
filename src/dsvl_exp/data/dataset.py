"""A torch Dataset over `Conversation`s: template, tokenization and image preprocessing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from dsvl_exp.data.conversation import Conversation
from dsvl_exp.data.images import load_image
from dsvl_exp.data.template import ChatTemplate, tokenize_conversation


class ConversationDataset(Dataset):
    def __init__(
        self,
        conversations: Sequence[Conversation],
        tokenizer,
        image_processor,
        template: ChatTemplate,
    ):
        self.conversations = list(conversations)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.template = template

    def __len__(self) -> int:
        return len(self.conversations)

    def pixel_values(self, conversation: Conversation) -> torch.Tensor:
        images = [load_image(entry, conversation.id) for entry in conversation.images]
        if not images:
            size = self.image_processor.crop_size
            return torch.zeros(0, 3, size["height"], size["width"])
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]

    def __getitem__(self, index: int) -> dict:
        conversation = self.conversations[index]
        input_ids, labels = tokenize_conversation(self.tokenizer, self.template, conversation)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "images": self.pixel_values(conversation),
            "id": conversation.id,
        }
