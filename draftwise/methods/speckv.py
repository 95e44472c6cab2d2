"""SpecKV: SnapKV's scorer fed with the draft's lookahead answer as extra queries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from draftwise.methods.base import check_positive
from draftwise.methods.snapkv import SnapKV


@dataclass(frozen=True)
class SpecKV(SnapKV):
    """Drop KV pairs by the target's attention from the prompt's last ``window`` queries *and* the
    queries of a lookahead answer the draft wrote.

    1. The draft greedily writes ``lookahead`` tokens ``y`` (default: as many as the target will generate).
    2. The target pre-fills ``x`` then ``y``; the queries of the window and of ``y`` (causal among
       themselves) attend to all keys in float32; SnapKV's reduction and pooling score the prefix keys.
    3. Per layer and KV head, the top ``budget - window`` prefix keys and the ``window`` keys are kept;
       ``y``'s own KV pairs are dropped.
    4. Decoding continues from the compressed cache at true positions ``n, n+1, ...``.

    Pre-fill runs as two chunks (``x``, then ``y``), so the cache of ``x`` is bit-identical to a plain
    pre-fill; with a budget at least the prompt length nothing is dropped and the answer is Full's.
    Sliding-window layers (Gemma 3's local layers) are left as the model keeps them: they already hold
    at most ``sliding_window`` entries, and the budget applies to the global layers.
    Defaults are the paper's: window 32, kernel 7, max pool, max reduction.
    """

    name: ClassVar[str] = "speckv"
    needs_draft: ClassVar[bool] = True

    lookahead: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lookahead is not None:
            check_positive("lookahead", self.lookahead)

    def lookahead_length(self, max_new_tokens: int) -> int:
        return self.lookahead if self.lookahead is not None else max_new_tokens
