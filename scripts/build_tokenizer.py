"""Regenerate the bundled tiny tokenizer (src/dsvl_exp/assets/tiny_tokenizer).

A byte-level BPE trained offline on the chat template and the synthetic data's vocabulary,
wrapped as a LLaMA-like fast tokenizer: BOS `<s>`, EOS `</s>`, UNK `<unk>`, no pad token
(loading adds `### Image:`, `<image>` and `<PAD>`, exactly as for a real LLaMA tokenizer).

    python scripts/build_tokenizer.py [--vocab-size 512]
"""

from __future__ import annotations

import argparse

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from dsvl_exp.data.synthetic import corpus_lines
from dsvl_exp.data.template import DEFAULT_SYSTEM_PROMPT
from dsvl_exp.models.tokenizer import BUNDLED_TOKENIZER

GENERAL_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Describe the image in detail. What is happening here? Why?",
    "There is a cat sitting on a table next to a cup of coffee.",
    "Yes. No. Maybe. I am not sure. The answer is",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000",
]


def build(vocab_size: int) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    template_text = [DEFAULT_SYSTEM_PROMPT, "### Question:\n", "\n\n### Answer:\n"]
    template_text += [f"### Image {n}:\n" for n in range(1, 9)]
    bpe.train_from_iterator((template_text + corpus_lines() + GENERAL_TEXT) * 20, trainer=trainer)
    bos = bpe.token_to_id("<s>")
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        model_max_length=4096, clean_up_tokenization_spaces=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--out", default=str(BUNDLED_TOKENIZER))
    args = parser.parse_args()
    tokenizer = build(args.vocab_size)
    tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out} ({len(tokenizer)} tokens)")


if __name__ == "__main__":
    main()
