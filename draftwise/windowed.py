"""Sliding-window layers pre-filled as what they are: a band.

transformers hands a sliding-window layer (Gemma 3's five in six, Mistral's, ...) to SDPA or eager
attention with a full ``[n, n]`` mask, so a pre-fill of ``n`` tokens computes every query-key pair
although each query sees only its last ``w`` keys. :class:`WindowedPrefill` runs such a layer over
blocks of queries, each reading only the keys its band reaches, through the same attention function
and the same mask (sliced): O(n·(w + block)) instead of O(n²), the same attention within float
rounding at every real position of a padded batch too (a padding position, every key hidden, reads
another set of keys than the dense pass does: nothing reads it). Full-attention layers, and a
bidirectional window, run as before.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from draftwise.attention import WRAPPED_IMPLEMENTATIONS, WrappingOverride, attention_modules

WINDOWED_ATTENTION = "draftwise_windowed"
BLOCK = 1024  # queries per block: each block reads at most BLOCK + w - 1 keys
# Prompt length from which a pre-fill goes through the band, per device type: measured with
# benchmarks/windowed.py (CPU, docs/results/windowed.md); not measured on CUDA, so never there.
WINDOWED_FROM = {"cpu": 2048}


def sliding_window(model: nn.Module) -> int | None:
    """The smallest sliding window among ``model``'s attention layers, or ``None`` if none slides
    (a layer's own ``sliding_window``, or its config's where the layer has none: Mistral)."""
    modules = attention_modules(model)
    windows = [getattr(m, "sliding_window", getattr(m.config, "sliding_window", None)) for m in modules]
    windows = [w for w in windows if w]
    return min(windows) if windows else None


class WindowedPrefill(WrappingOverride):
    """While active, ``model``'s sliding-window layers attend one block of ``block`` queries at a time
    over the keys of its band; other layers, and any call the band would not shorten, run unchanged.

    Needs ``eager`` or ``sdpa`` attention (the function each block calls).
    """

    implementation = WINDOWED_ATTENTION
    purpose = "the windowed pre-fill"

    def __init__(self, model: nn.Module, block: int | None = None) -> None:
        super().__init__(model)
        self.block = block or BLOCK

    def __enter__(self) -> WindowedPrefill:
        # one name per wrapped implementation, so that transformers builds the masks that one takes
        previous = self.model.config._attn_implementation
        self.implementation = f"{WINDOWED_ATTENTION}_{previous}"
        if previous in ALL_MASK_ATTENTION_FUNCTIONS:
            AttentionMaskInterface.register(self.implementation, ALL_MASK_ATTENTION_FUNCTIONS[previous])
        super().__enter__()
        return self

    def attention(self, module, query, key, value, attention_mask, sliding_window=None, **kwargs):
        """``query`` ``[B, H, T, d]`` the last ``T`` of the ``K`` keys ``[B, G, K, d]``; the mask
        ``[B, 1 or H, T, >= K]``. Returns ``([B, T, H, d], None)``."""
        inner = self.inner(module)
        queries, n_keys = query.shape[2], key.shape[2]
        banded = (
            sliding_window
            and n_keys > self.block + sliding_window
            and getattr(module, "is_causal", True)  # a bidirectional window reaches later keys
            and attention_mask is not None  # transformers' own mask: one row per query, a column per key
            and attention_mask.shape[-2] == queries
            and attention_mask.shape[-1] >= n_keys
        )
        if not banded:
            return inner(module, query, key, value, attention_mask, sliding_window=sliding_window, **kwargs)
        start = n_keys - queries
        outputs = []
        for first in range(0, queries, self.block):
            last = min(first + self.block, queries)
            low, high = max(0, start + first - sliding_window + 1), start + last
            out, _ = inner(
                module,
                query[:, :, first:last],
                key[:, :, low:high],
                value[:, :, low:high],
                attention_mask[:, :, first:last, low:high],
                sliding_window=sliding_window,
                **kwargs,
            )
            outputs.append(out)
        return torch.cat(outputs, dim=1), None


def may_window(model: nn.Module) -> bool:
    """Whether some pre-fill of ``model`` may switch its attention to :class:`WindowedPrefill` (for
    every thread using the model: threads sharing it must not overlap such a pass). Asked while
    another thread's pass holds the switch, it still answers for the model itself."""
    return torch.device(model.device).type in WINDOWED_FROM and sliding_window(model) is not None


def windowed_prefill(model: nn.Module, length: int) -> AbstractContextManager:
    """:class:`WindowedPrefill` for a pre-fill of ``length`` tokens where it was measured faster (a
    device in :data:`WINDOWED_FROM`, a prompt that long, eager or SDPA attention, a sliding window
    shorter than the prompt); otherwise a context that changes nothing. The model's layers are walked
    only once the cheap conditions hold."""
    start = WINDOWED_FROM.get(torch.device(model.device).type)
    if start is None or length < start or model.config._attn_implementation not in WRAPPED_IMPLEMENTATIONS:
        return nullcontext()
    window = sliding_window(model)
    return WindowedPrefill(model) if window is not None and length > window else nullcontext()
