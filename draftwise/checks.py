"""Input checks that turn bad input into a clear error before any work starts."""

from __future__ import annotations

from torch import nn

from draftwise.methods.base import Footprint, Method, OptionError

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


def check_method(method: Method, target: nn.Module, prompt_length: int, max_new_tokens: int) -> Footprint:
    """Before any work: raise :class:`OptionError` for an option of ``method`` beyond the target's
    context (a width, or a lookahead that does not fit after the prompt), ``ValueError`` for a prompt
    and answer beyond it. Returns what the method will hold beyond the prompt."""
    method.check_widths(context_length(target))
    need = method.footprint(prompt_length, max_new_tokens)
    _check_room(target, "target", prompt_length, need.target, need.target > max_new_tokens)
    check_context(target, prompt_length, need.target, "target")
    return need


def check_draft_room(draft: nn.Module, draft_length: int, need: Footprint) -> None:
    """Raise if the draft's context cannot hold its ``draft_length``-token prompt and ``need``'s lookahead."""
    if need.draft is None:
        return
    _check_room(draft, "draft", draft_length, need.draft, need.lookahead > 0)
    limit = context_length(draft)
    if limit is not None and draft_length + need.draft > limit:
        raise ValueError(f"the prompt ({draft_length} tokens) exceeds the draft's context of {limit} tokens")


def _check_room(model: nn.Module, role: str, length: int, extra: int, lookahead: bool) -> None:
    """An :class:`OptionError` naming ``lookahead`` when the prompt fits but not with the lookahead."""
    limit = context_length(model)
    if lookahead and limit is not None and length <= limit < length + extra:
        raise OptionError(
            "lookahead",
            f"the prompt ({length} tokens) plus the lookahead ({extra} tokens) exceeds the {role}'s "
            f"context of {limit} tokens: lower lookahead",
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


class TooLarge(ValueError):
    """A request whose memory, before anything is dropped, exceeds a limit."""


def attention_bytes(model: nn.Module, rows: int) -> int:
    """Bytes of float32 attention weights (and their softmax) for ``rows`` query-key pairs per query
    head in one layer of ``model``."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return 2 * 4 * rows * config.num_attention_heads


def peak_bytes(
    target: nn.Module | None,
    draft: nn.Module | None,
    need: Footprint,
    prompt_length: int,
    draft_length: int | None = None,
) -> int:
    """The most bytes of KV cache and scoring weights one stage holds (the draft's or the target's;
    they run one after the other), for a prompt of ``prompt_length`` tokens (``draft_length`` in the
    draft's tokens) and ``need`` (:meth:`Method.footprint`)."""
    stages = [0]
    if target is not None:
        held = prompt_length + need.target
        stages.append(kv_cache_bytes(target, held) + attention_bytes(target, need.rows))
    if draft is not None and need.draft is not None:
        held = (prompt_length if draft_length is None else draft_length) + need.draft
        stages.append(kv_cache_bytes(draft, held) + attention_bytes(draft, need.draft_rows))
    return max(stages)


def check_memory(needed: int, limit: int | None, prompt_length: int, need: Footprint) -> None:
    """Raise :class:`TooLarge` if ``needed`` bytes (:func:`peak_bytes`) exceed ``limit``."""
    if limit is not None and needed > limit:
        more = f", {need.target} more" if need.target else ""
        lookahead = f" and a lookahead of {need.lookahead}" if need.lookahead else ""
        raise TooLarge(
            f"this request needs about {_size(needed)} of KV cache and attention weights (a prompt of "
            f"{prompt_length} tokens{more}{lookahead}), over the limit of {_size(limit)} per "
            "request: send a shorter prompt or ask for fewer tokens"
        )


def _size(size: int) -> str:
    return f"{size / 2**20:.2f} MiB"


def kv_cache_bytes(model: nn.Module, tokens: int, kept: int | None = None) -> int:
    """Bytes of keys and values ``model`` holds for ``tokens`` tokens, from its config and weights'
    dtype: sliding-window layers hold at most their window; full-attention layers hold ``kept``
    positions when a method dropped some (else all ``tokens``)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    window = getattr(config, "sliding_window", None)
    kinds = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    element = next(model.parameters()).element_size()
    full = tokens if kept is None else kept
    held = sum(min(tokens, window) if kind == "sliding_attention" and window else full for kind in kinds)
    return 2 * held * kv_heads * head_dim * element


def reserved_kv_bytes(model: nn.Module, method: Method, prompt_length: int, new_tokens: int) -> int:
    """Bytes of keys and values one generation holds at most once ``method`` has compressed its prompt:
    what the method keeps (:meth:`Method.kept_length`) and the new tokens."""
    total = prompt_length + new_tokens
    return kv_cache_bytes(model, total, method.kept_length(prompt_length) + new_tokens)
