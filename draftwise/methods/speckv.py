"""SpecKV: SnapKV's scorer fed with the draft's lookahead answer as extra queries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from draftwise.methods.base import SparsePrefilling, check_positive
from draftwise.methods.snapkv import SnapKV


@dataclass(frozen=True)
class SpecKV(SparsePrefilling, SnapKV):
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
    5. Optional sparse pre-fill (``sparse_prefill=True``): the target pre-fills ``x`` and ``y`` in one
       pass in which every query sees only ``vertical`` keys (per layer and KV head, the ones this
       scorer ranks highest from the window and lookahead queries of that pass) and a band of the last
       ``slash`` keys. It applies when ``vertical + slash`` is less than ``n + m``; the answer is then
       approximate even with a budget covering the prompt. ``sparse_kernel``: ``"flex"`` runs it as one
       fused FlexAttention kernel (:mod:`draftwise.flex_sparse`, compiled by ``torch.compile``),
       ``"reference"`` as plain PyTorch (:mod:`draftwise.sparse`); the two agree to float rounding.
       ``"auto"``: ``"flex"`` where it can be compiled (a C++ compiler for CPUs, Triton for CUDA).

    Defaults are the paper's: window 32, kernel 7, max pool, max reduction, vertical = slash = 2048.
    """

    name: ClassVar[str] = "speckv"

    lookahead: int | None = None
    sparse_prefill: bool | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lookahead is not None:
            check_positive("lookahead", self.lookahead)
        self.check_sparse()
