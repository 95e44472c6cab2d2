"""draftwise: a small draft model tells a large target model which prompt tokens and KV pairs matter.

Five lines::

    import draftwise
    target, draft, tokenizer = draftwise.load_default_pair()
    out = draftwise.generate(target, draft, tokenizer, [{"role": "user", "content": long_text}],
                             method=draftwise.SpecKV(budget=256), max_new_tokens=64)
    print(out.text, out.stats)
"""

from draftwise.draft import self_draft
from draftwise.generate import GenerationResult, GenerationStats, generate
from draftwise.methods import (
    H2O,
    METHODS,
    TOVA,
    AdaKV,
    Full,
    HeadTail,
    KeyDiff,
    KNorm,
    KVMethod,
    Method,
    Perplexity,
    PromptMethod,
    PyramidKV,
    RandomDrop,
    SnapKV,
    SpecKV,
    SpecKVPC,
    SpecPC,
    StreamingLLM,
)
from draftwise.models import load_default_pair, load_model
from draftwise.prompt import CompressedText, compress_text

__version__ = "0.1.0"

__all__ = [
    "CompressedText",
    "H2O",
    "AdaKV",
    "METHODS",
    "TOVA",
    "Full",
    "GenerationResult",
    "GenerationStats",
    "HeadTail",
    "KNorm",
    "KVMethod",
    "KeyDiff",
    "Method",
    "Perplexity",
    "PromptMethod",
    "PyramidKV",
    "RandomDrop",
    "SnapKV",
    "SpecKV",
    "SpecKVPC",
    "SpecPC",
    "StreamingLLM",
    "compress_text",
    "generate",
    "load_default_pair",
    "load_model",
    "self_draft",
]
