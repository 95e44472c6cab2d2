"""Test helpers: tiny random-weight models of every supported architecture, a word-level tokenizer for
them, and the one matrix of methods the tests draw from. Imported by the tests (``from helpers import``);
the fixtures are in ``conftest.py``.

Random weights prove invariants (exactness, positions, budgets), never quality.
"""

from __future__ import annotations

import os
from dataclasses import fields, replace

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


def tiny_model(arch: str, seed: int = 0, attn: str = "eager", layers: int = 3, vocab: int = VOCAB):
    return peaked(tiny_config(arch, layers, vocab), attn, seed)


def peaked(config, attn: str, seed: int = 0):
    """A model of ``config`` whose weights, larger than the default init, give peaked, non-uniform
    attention, so scores differ."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "norm" not in name:
                param.normal_(0, 0.25)
    return model.eval()


WINDOW = 16  # the sliding window of sliding_model


def sliding_model(arch: str, attn: str = "sdpa") -> torch.nn.Module:
    """A tiny model of ``arch`` whose layers (some or all) slide over ``WINDOW`` keys."""
    if arch == "gemma3_text":
        return tiny_model(arch, attn=attn)  # sliding and full layers, window 16
    config = tiny_config(arch)
    config.sliding_window = WINDOW
    if arch == "qwen2":  # the first layer full, the others sliding
        config.use_sliding_window, config.max_window_layers = True, 1
        config.layer_types = ["full_attention"] + ["sliding_attention"] * (config.num_hidden_layers - 1)
    return peaked(config, attn)


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


def real_models_enabled() -> bool:
    return os.environ.get("DRAFTWISE_SKIP_REAL_MODELS") != "1"


# ---- one matrix of methods, and a way to run their whole compression path ----


def every_method(budget: int, window: int = 8) -> list:
    """Every method (and the family's options: lookahead wrappers, CAOTE, sparse pre-fill) at ``budget``,
    with kernels and neighbourhoods that fit the tiny prompts (at most 7 tokens). Tests that need the
    whole method list draw it from here, so a new method is tested everywhere at once."""
    from draftwise import (
        H2O,
        TOVA,
        AdaKV,
        HeadTail,
        KeyDiff,
        KNorm,
        Perplexity,
        PyramidKV,
        RandomDrop,
        SnapKV,
        SpecKV,
        SpecKVPC,
        SpecPC,
        StreamingLLM,
    )

    return [
        SnapKV(budget=budget, window=window),
        SnapKV(budget=budget, window=window, caote=True, pool="avg", reduce="mean", kernel=5),
        SpecKV(budget=budget, window=window, lookahead=6),
        SpecKV(budget=budget, window=window, lookahead=6, sparse_prefill=True, vertical=8, slash=window + 6),
        PyramidKV(budget=budget, window=window),
        PyramidKV(budget=budget, window=window, lookahead=4),
        AdaKV(budget=budget, window=window, lookahead=4),
        StreamingLLM(budget=budget, window=window),
        KNorm(budget=budget, window=window),
        KeyDiff(budget=budget, window=window),
        H2O(budget=budget, window=window, block=32),
        H2O(budget=budget, window=window, caote=True),
        TOVA(budget=budget, window=window),
        TOVA(budget=budget, window=window, caote=True),
        Perplexity(budget=budget, window=window),
        RandomDrop(budget=budget, window=window),
        HeadTail(budget=budget, window=window),
        SpecPC(budget=budget, window=window, neighbourhood=4, kernel=4, first_layer=1, lookahead=3),
        SpecKVPC(kv_budget=budget, prompt_budget=budget, kv_window=window, prompt_window=window, lookahead=4),
    ]


def keeping_everything(n: int, window: int = 8) -> list:
    """:func:`every_method` with budgets that keep all of an ``n``-token prompt: ``n`` for most;
    PyramidKV's budget is raised until its smallest layer keeps ``n`` (``(C - w) / beta >= n - w``);
    the sparse pre-fill's verticals cover every key before the window and its band the window and
    lookahead (attention then hides nothing)."""
    from draftwise import PyramidKV, SpecKV

    out = []
    for method in every_method(n, window):
        if isinstance(method, PyramidKV):
            method = replace(method, budget=window + method.beta * (n - window))
        elif isinstance(method, SpecKV) and method.sparse_prefill is True:
            method = replace(method, vertical=n - window)
        out.append(method)
    return out


_FORCED: dict[type, type] = {}


def forced(method):
    """``method`` as an instance of a test subclass that always runs its whole compression path: its
    ``compresses()`` is True whatever the prompt length (SpecKV-PC: both stages'), and a SpecKV with
    ``sparse_prefill=True`` pre-fills sparsely whatever ``vertical + slash`` (``"auto"``: densely).
    With a budget that keeps everything, the answer must still be Full's."""
    from draftwise import SpecKV, SpecKVPC

    cls = type(method)
    if cls not in _FORCED:
        body: dict = {"compresses": lambda self, prompt_length: True}
        if issubclass(cls, SpecKV):
            body["sparse_for"] = lambda self, *args: self.sparse_prefill is True
        if issubclass(cls, SpecKVPC):
            body["prompt_stage"] = lambda self: forced(cls.prompt_stage(self))
            body["kv_stage"] = lambda self: forced(cls.kv_stage(self))
        _FORCED[cls] = type(f"Forced{cls.__name__}", (cls,), body)
    return _FORCED[cls](**{f.name: getattr(method, f.name) for f in fields(method)})


# ---- a batch of rows of every kind ----

BATCH_LENGTHS = (5, 12, 40, 70, 25, 90, 33)  # under and over Gemma's window of 16, and the budget of 24


def mixed_requests() -> list:
    """Every method of the matrix (and Full), one ``GenerationRequest`` each, with mixed prompt lengths
    and token limits; prompts the budget covers go through Full, so rows of every kind of cache meet in
    one batch."""
    from draftwise import Full, GenerationRequest

    requests = []
    for i, method in enumerate([Full(), *every_method(24)]):
        n = BATCH_LENGTHS[i % len(BATCH_LENGTHS)]
        method = method if n > 24 else Full()
        requests.append(
            GenerationRequest(random_ids(n, seed=i), method=method, max_new_tokens=3 + (i * 7) % 30)
        )
    return requests


def assert_fused_prefill_is_reference(target, ids, guess, method, tolerance: float) -> None:
    """SpecKV's whole sparse pre-fill with ``method`` (its fused kernel) gives the reference kernel's
    logits and cache keys within ``tolerance``, and exactly its kept positions."""
    from draftwise.prefill import prefill_sparse

    fused = prefill_sparse(target, ids, method, guess)
    reference = prefill_sparse(target, ids, replace(method, sparse_kernel="reference"), guess)
    torch.testing.assert_close(fused.logits, reference.logits, rtol=tolerance, atol=tolerance)
    for mine, theirs in zip(fused.cache.layers, reference.cache.layers, strict=True):
        torch.testing.assert_close(mine.keys, theirs.keys, rtol=tolerance, atol=tolerance)
        if hasattr(theirs, "positions"):
            assert torch.equal(mine.positions, theirs.positions)
