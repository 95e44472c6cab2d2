"""draftwise: a small draft model tells a large target model which prompt tokens and KV pairs matter.

Five lines::

    import draftwise
    target, draft, tokenizer = draftwise.load_default_pair()
    out = draftwise.generate(target, draft, tokenizer, [{"role": "user", "content": long_text}],
                             method=draftwise.SpecKV(budget=256), max_new_tokens=64)
    print(out.text, out.stats)
"""

from draftwise import methods as _methods
from draftwise.draft import self_draft
from draftwise.generate import GenerationRequest, GenerationResult, GenerationStats, generate, generate_batch
from draftwise.methods import *  # noqa: F403  (every method is public API)
from draftwise.models import load_default_pair, load_model
from draftwise.speculative import SpeculativeConfig
from draftwise.text_compression import CompressedText, compress_text

__version__ = "0.1.0"

__all__ = [
    *_methods.__all__,
    "CompressedText",
    "GenerationRequest",
    "GenerationResult",
    "GenerationStats",
    "SpeculativeConfig",
    "compress_text",
    "generate",
    "generate_batch",
    "load_default_pair",
    "load_model",
    "self_draft",
]
