"""Tiny random-weight models of every supported architecture, and a word-level tokenizer for them.

Random weights prove invariants (exactness, positions, budgets), never quality.
"""

from __future__ import annotations

import os

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

VOCAB = 96
ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral", "gemma3_text")
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=1024,
    eos_token_id=1,
    bos_token_id=0,
    tie_word_embeddings=False,
)


def tiny_config(arch: str, layers: int = 3, vocab: int = VOCAB):
    common = {**COMMON, "num_hidden_layers": layers, "vocab_size": vocab}
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "qwen3":
        return Qwen3Config(**common)
    if arch == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if arch == "gemma3_text":
        # Local (sliding, window 16) and global layers, as in Gemma 3.
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
        return Gemma3TextConfig(**common, sliding_window=16, layer_types=types, query_pre_attn_scalar=16)
    raise ValueError(arch)


def tiny_model(arch: str, seed: int = 0, attn: str = "eager", layers: int = 3):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, layers), attn_implementation=attn)
    # Larger weights than the default init give peaked, non-uniform attention, so scores differ.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "norm" not in name:
                param.normal_(0, 0.25)
    return model.eval()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<bos>": 0, "<eos>": 1, "<unk>": 2} | {f"w{i}": i for i in range(3, VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    tokenizer.chat_template = "{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}w5"
    return tokenizer


def random_ids(n: int, seed: int = 0) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(6, VOCAB, (n,), generator=generator).tolist()


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return tiny_tokenizer()


def real_models_enabled() -> bool:
    return os.environ.get("DRAFTWISE_SKIP_REAL_MODELS") != "1"
