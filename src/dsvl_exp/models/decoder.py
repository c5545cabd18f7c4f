"""The LLaMA decoder, from a pretrained folder or built from architecture values."""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM

from .mmca import MMCA_IMPLEMENTATIONS

# decoder.attention -> transformers attn_implementation (mmca ones registered by models.mmca)
ATTENTION_IMPLEMENTATIONS = {"causal": "sdpa", **{name: name for name in MMCA_IMPLEMENTATIONS}}
ATTENTION_CHOICES = tuple(ATTENTION_IMPLEMENTATIONS)


def build_llama_decoder(
    vocab_size: int,
    pretrained: str | None = None,
    attention: str = "causal",
    hidden_size: int = 4096,
    num_layers: int = 32,
    num_heads: int = 32,
    num_kv_heads: int | None = None,
    intermediate_size: int = 11008,
    max_position_embeddings: int = 4096,
    rms_norm_eps: float = 1e-5,
    rope_theta: float = 10000.0,
) -> LlamaForCausalLM:
    """`vocab_size` is the extended tokenizer's length; pretrained embeddings are resized to it.

    Architecture values are ignored when `pretrained` is given (its config.json rules)."""
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"decoder.attention={attention!r} is not one of {ATTENTION_CHOICES}")
    if pretrained:
        model = LlamaForCausalLM.from_pretrained(pretrained, attn_implementation=ATTENTION_IMPLEMENTATIONS[attention])
    else:
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads or num_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings,
            rms_norm_eps=rms_norm_eps,
            rope_theta=rope_theta,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM._from_config(config)  # HF init; under ZeRO-3 built partitioned
        model.set_attn_implementation(ATTENTION_IMPLEMENTATIONS[attention])
    embedding = model.get_input_embeddings().weight
    if getattr(embedding, "ds_shape", embedding.shape)[0] != vocab_size:  # ZeRO-3 shards report shape 0
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    return model


def uses_mmca(decoder) -> bool:
    return decoder.config._attn_implementation in MMCA_IMPLEMENTATIONS
