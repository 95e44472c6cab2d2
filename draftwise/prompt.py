"""How a prompt is compressed: choosing which prompt tokens to keep from per-token scores."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from draftwise.attention import QueryRecorder, attention_modules, module_attention_rows
from draftwise.cache import prunable_layers
from draftwise.checks import check_draft_room, check_memory, context_length, peak_bytes
from draftwise.decoding import decode, stop_token_ids
from draftwise.methods.specpc import SpecPC
from draftwise.scoring import smooth


class _FreeRuns:
    """The prefix positions not kept yet, with the nearest free one on either side of any position in
    near-constant time (union-find with path halving), so growing neighbourhoods costs O(n) in all."""

    def __init__(self, size: int) -> None:
        self.kept = bytearray(size)
        self._left = list(range(size + 1))  # index i + 1 stands for position i; 0 for "none left"
        self._right = list(range(size + 1))  # index i for position i; size for "none right"

    def left_of(self, i: int) -> int:
        """The nearest free position <= ``i`` (-1 if none)."""
        parent, j = self._left, i + 1
        while parent[j] != j:
            parent[j] = parent[parent[j]]
            j = parent[j]
        return j - 1

    def right_of(self, i: int) -> int:
        """The nearest free position >= ``i`` (``size`` if none)."""
        parent, j = self._right, i
        while parent[j] != j:
            parent[j] = parent[parent[j]]
            j = parent[j]
        return j

    def keep(self, i: int) -> None:
        self.kept[i] = 1
        self._left[i + 1] = i
        self._right[i] = i + 1


def select_tokens(scores: torch.Tensor, budget: int, window: int, neighbourhood: int = 1) -> torch.Tensor:
    """Choose ``min(budget, n)`` token positions from scores ``[n]``, in ascending order.

    The last ``window`` tokens are always kept. The other places go, in descending score order, to
    each scored token and its neighbourhood of ``neighbourhood`` tokens (offsets 0, -1, +1, -2, +2,
    ...: ``neighbourhood // 2`` to the left, ``(neighbourhood - 1) // 2`` to the right, nearest first,
    left before right), skipping tokens already kept, until ``budget`` tokens are kept. Ties go to
    the earlier position. Time is O(n log n) whatever the neighbourhood.
    """
    n = scores.shape[-1]
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D [n], got shape {tuple(scores.shape)}")
    if budget <= 0 or window <= 0 or neighbourhood <= 0:
        raise ValueError("budget, window and neighbourhood must be positive")
    if window > n:
        raise ValueError(f"window ({window}) is larger than the prompt ({n} tokens)")
    if budget < window:
        raise ValueError(f"budget ({budget}) must be at least the window ({window})")
    if budget >= n:
        return torch.arange(n)
    prefix = n - window
    free = _FreeRuns(prefix)
    count = window
    reach_left, reach_right = neighbourhood // 2, (neighbourhood - 1) // 2
    # Stable descending sort: equal scores keep position order.
    order = torch.sort(scores[:prefix].float().cpu(), descending=True, stable=True).indices.tolist()
    for centre in order:
        if count == budget:
            break
        lo, hi = max(0, centre - reach_left), min(prefix - 1, centre + reach_right)
        left, right = free.left_of(centre), free.right_of(centre)
        while count < budget:
            left_ok, right_ok = left >= lo, right <= hi
            if not (left_ok or right_ok):
                break
            # nearest first; at equal distance the left one (offset -d comes before +d)
            if left_ok and (not right_ok or centre - left <= right - centre):
                free.keep(left)
                if left == right:
                    right = free.right_of(right + 1)
                left = free.left_of(left - 1)
            else:
                free.keep(right)
                right = free.right_of(right + 1)
            count += 1
    return _positions(free.kept, n)


def _positions(kept_prefix: bytearray, n: int) -> torch.Tensor:
    chosen = [i for i, flag in enumerate(kept_prefix) if flag]
    return torch.tensor(chosen + list(range(len(kept_prefix), n)), dtype=torch.long)


@dataclass
class CompressedPrompt:
    """The positions a prompt method kept, and SpecPC's lookahead (reusable as SpecKV's lookahead)."""

    positions: torch.Tensor  # [C] ascending positions into the original prompt
    lookahead_ids: torch.Tensor | None  # [1, m], the draft's lookahead (SpecPC only)
    scores: torch.Tensor  # [n] importance of each prompt token


@torch.no_grad()
def specpc_scores(
    draft: nn.Module, input_ids: torch.Tensor, method: SpecPC, stop_ids: Iterable[int] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """SpecPC's importance of each prompt token, from the draft's attention.

    Returns ``(scores [n], lookahead_ids [1, m])``. The full-attention layers from
    ``method.first_layer`` on are read (all of them if there are none that deep); sliding-window
    layers are not, as they no longer hold the whole prompt.
    """
    input_ids = input_ids.to(draft.device)
    n = input_ids.shape[1]
    if method.window > n:
        raise ValueError(f"window ({method.window}) is larger than the prompt ({n} tokens)")
    modules = attention_modules(draft)
    first = min(method.first_layer, len(modules) - 1)
    cache = DynamicCache(config=draft.config)
    with QueryRecorder(draft, last=method.window) as recorder:
        out = draft(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        recorder.last = 1
        lookahead_ids = decode(
            draft, cache, out.logits[:, -1], n, method.lookahead, stop_ids=stop_ids, feed_last=True
        )
    steps = lookahead_ids.shape[1]
    query_positions = torch.arange(n - method.window, n + steps)
    window_weight = (
        torch.linspace(0, 1, method.window) if method.weighted_query else torch.ones(method.window)
    )
    weights = torch.cat([window_weight, torch.ones(steps)]).to(draft.device)
    scores = torch.zeros(n, device=draft.device)
    full_layers = prunable_layers(cache)  # a sliding-window layer no longer holds the whole prompt
    if not full_layers:
        raise ValueError("the draft has no full-attention layer to read the prompt's importance from")
    scored = [layer for layer in full_layers if layer >= first] or full_layers
    for layer in scored:
        module = modules[layer]
        queries, keys = recorder.queries(layer), cache.layers[layer].keys
        rows = module_attention_rows(module, queries, keys, query_positions)[..., :n]
        weighted = rows * weights[:, None]  # [B, G, H/G, q, n]
        scores = torch.maximum(scores, weighted.amax(dim=(0, 1, 2, 3)))
    return smooth(scores, method.kernel, method.pool), lookahead_ids


@dataclass
class CompressedText:
    """A prompt compressed as text, for a target served anywhere (an OpenAI-compatible engine)."""

    text: str
    tokens: int  # tokens of the original text (draft's tokenizer)
    tokens_kept: int


def compress_text(
    draft: nn.Module,
    tokenizer,
    text: str,
    method: SpecPC | None = None,
    max_bytes: int | None = None,
) -> CompressedText:
    """SpecPC on plain text with the draft alone: the kept tokens, in order, decoded back to text.

    End ``text`` with the question, so the window (the last ``method.window`` tokens) holds it and the
    scores are query-aware. The budget counts the draft's tokens. Before any work, the options and the
    draft's context are checked (``ValueError``), and with ``max_bytes`` the draft's KV cache and
    attention weights (:class:`draftwise.checks.TooLarge`).
    """
    method = method if method is not None else SpecPC()
    if not text.strip():
        raise ValueError("the text to compress is empty")
    ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
    n = ids.shape[1]
    method.check_widths(context_length(draft))
    need = method.footprint(n, 0)
    check_draft_room(draft, n, need)
    check_memory(peak_bytes(None, draft, need, n), max_bytes, n, need)
    if not method.compresses(n):
        return CompressedText(text, n, n)
    compressed = method.compress(draft, ids, stop_token_ids(tokenizer, draft))
    kept = ids[0, compressed.positions].tolist()
    return CompressedText(tokenizer.decode(kept), n, len(kept))
