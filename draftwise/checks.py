"""Input checks that turn bad input into a clear error before any work starts."""

from __future__ import annotations

from torch import nn

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral", "gemma3_text")


def check_architecture(model: nn.Module, role: str = "target") -> None:
    """Raise ``TypeError`` unless ``model`` is a supported decoder-only architecture."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise TypeError(
            f"unsupported {role} architecture {model_type!r} ({type(model).__name__}); "
            f"draftwise supports: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if getattr(config, "is_encoder_decoder", False) or not hasattr(model, "get_output_embeddings"):
        raise TypeError(f"the {role} must be a causal LM (AutoModelForCausalLM), got {type(model).__name__}")


def context_length(model: nn.Module) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def check_context(model: nn.Module, prompt_tokens: int, new_tokens: int, role: str = "target") -> None:
    """Raise ``ValueError`` if the prompt plus the tokens to generate exceed the model's context."""
    limit = context_length(model)
    if limit is not None and prompt_tokens + new_tokens > limit:
        raise ValueError(
            f"the prompt ({prompt_tokens} tokens) plus {new_tokens} new tokens exceeds the {role}'s "
            f"context of {limit} tokens"
        )


def vocabulary_size(model: nn.Module) -> int:
    return int(model.get_input_embeddings().num_embeddings)


def check_same_vocabulary(target: nn.Module, draft: nn.Module) -> None:
    """Raise ``ValueError`` if the draft cannot read the target's token ids."""
    t, d = vocabulary_size(target), vocabulary_size(draft)
    if t != d:
        raise ValueError(
            f"the draft's vocabulary ({d} tokens) differs from the target's ({t} tokens): pass the "
            "draft's own tokenizer as draft_tokenizer=... so that it reads the prompt as text"
        )


def kv_cache_bytes(model: nn.Module, tokens: int) -> int:
    """Bytes of keys and values ``model`` holds for ``tokens`` tokens with nothing dropped (sliding-window
    layers hold at most their window), from its config and weights' dtype."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    window = getattr(config, "sliding_window", None)
    kinds = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    element = next(model.parameters()).element_size()
    held = sum(min(tokens, window) if kind == "sliding_attention" and window else tokens for kind in kinds)
    return 2 * held * kv_heads * head_dim * element
