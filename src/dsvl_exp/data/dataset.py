"""A torch Dataset over `Conversation`s: template, tokenization and image preprocessing.

With `draws` (`data.redraw_each_epoch`), `set_epoch(e)` swaps in epoch e's draw of the same
samples (see `redraw.py`). Lengths and the `max_seq_len` fit are computed once, on the build-time
draw (epoch 0, cached); a re-drawn sample is fitted when it is loaded: it keeps its leading
rounds within `max_seq_len`, and if even its first round is too long (a longer prompt was drawn)
the sample's epoch-0 version, which fits, is used instead. The length-grouped sampler keeps the
epoch-0 lengths as its estimate: re-draws change a sample's length only by the drawn prompt
and, for concatenated datasets, by which conversations were joined.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from dsvl_exp.constants import IMAGE_TOKEN
from dsvl_exp.data.conversation import Conversation
from dsvl_exp.data.errors import DataError
from dsvl_exp.data.images import load_image
from dsvl_exp.data.length import known_longer_than
from dsvl_exp.data.template import ChatTemplate, tokenize_round


class ConversationDataset(Dataset):
    def __init__(
        self,
        conversations: Sequence[Conversation],
        tokenizer,
        image_processor,
        template: ChatTemplate,
        draws=None,
        max_seq_len: int | None = None,
        tokens_per_image: int = 1,
    ):
        self.conversations = list(conversations)
        self.first_epoch = self.conversations
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.template = template
        self.draws = draws  # redraw.EpochDraws aligned to `conversations`, or None
        self.max_seq_len = max_seq_len
        self.tokens_per_image = tokens_per_image
        self.epoch = 0
        image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.image_token_id = image_token_id if image_token_id != tokenizer.unk_token_id else None

    def __len__(self) -> int:
        return len(self.conversations)

    def set_epoch(self, epoch: int) -> None:
        """Epoch `epoch`'s draw of every sample; a no-op without re-draws."""
        if self.draws is None or epoch == self.epoch:
            return
        self.conversations = self.first_epoch if epoch == 0 else self.draws.conversations(epoch)
        self.epoch = epoch

    def pixel_values(self, conversation: Conversation) -> torch.Tensor:
        sample = f"{conversation.id} ({conversation.source})" if conversation.source else conversation.id
        images = [load_image(entry, sample) for entry in conversation.images]
        if not images:
            size = self.image_processor.crop_size
            return torch.zeros(0, 3, size["height"], size["width"])
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]

    def tokenized(self, conversation: Conversation) -> tuple[list[int], list[int], int]:
        """Ids and labels of the leading rounds within max_seq_len, and how many rounds that is."""
        input_ids: list[int] = []
        labels: list[int] = []
        total, kept = 0, 0
        for (prompt, answer), round_ in zip(self.template.render_conversation(conversation), conversation.rounds):
            if self.max_seq_len is not None and known_longer_than(self.tokenizer, [prompt, answer], self.max_seq_len):
                break  # a huge text (a re-drawn sample): known without tokenizing all of it
            ids, lab = tokenize_round(self.tokenizer, prompt, answer)
            total += len(ids) + round_.num_images * (self.tokens_per_image - 1)
            if self.max_seq_len is not None and total > self.max_seq_len:
                break
            input_ids += ids
            labels += lab
            kept += 1
        return input_ids, labels, kept

    def check_image_tokens(self, conversation: Conversation, input_ids: list[int]) -> None:
        """One image token per image, or the model would fail later without naming the record
        (record_checks.py catches the known causes up front; this names any other)."""
        if self.image_token_id is None:
            return
        tokens = input_ids.count(self.image_token_id)
        if tokens != len(conversation.images):
            raise DataError(f"{conversation.source or 'the data'}: sample {conversation.id} renders {tokens} '{IMAGE_TOKEN}' "
                            f"token(s) for {len(conversation.images)} image(s); remove stray '{IMAGE_TOKEN}' text from the "
                            "record (or from data.system_prompt)")

    def __getitem__(self, index: int) -> dict:
        conversation = self.conversations[index]
        input_ids, labels, kept = self.tokenized(conversation)
        if kept == 0:  # only a re-drawn sample can get here: epoch 0 was fitted at build time
            conversation = self.first_epoch[index]
            input_ids, labels, kept = self.tokenized(conversation)
        if kept < len(conversation.rounds):
            conversation = Conversation(conversation.id, conversation.images[: sum(r.num_images for r in conversation.rounds[:kept])],
                                        conversation.rounds[:kept], conversation.source, conversation.meta)
        self.check_image_tokens(conversation, input_ids)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "images": self.pixel_values(conversation),
            "id": conversation.id,
        }
