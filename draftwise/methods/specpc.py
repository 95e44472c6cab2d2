"""SpecPC: drop prompt tokens, scored by the draft's attention."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers import DynamicCache

from draftwise.attention import QueryRecorder, attention_modules, module_attention_rows
from draftwise.cache import prunable_layers
from draftwise.decoding import decode
from draftwise.methods.base import (
    Footprint,
    Pool,
    PromptMethod,
    SparsePrefilling,
    check_non_negative,
    check_positive,
)
from draftwise.scoring import smooth
from draftwise.sparse import SparsePrefill
from draftwise.token_selection import select_tokens
from draftwise.windowed import windowed_prefill


@dataclass(frozen=True)
class SpecPC(SparsePrefilling, PromptMethod):
    """Compress the prompt to ``budget`` tokens with the draft's attention; the target reads the result.

    1. The draft reads the prompt and greedily writes ``lookahead`` tokens.
    2. From layer ``first_layer`` on, the attention of the prompt's last ``window`` queries and of every
       lookahead token's query (each token fed once, the last one included) over the prompt keys is
       computed in float32.
    3. Window queries are weighted linearly from 0 (oldest) to 1 (newest) if ``weighted_query``;
       lookahead queries weigh 1. The maximum over heads, queries, layers and lookahead steps gives one
       score per prompt token.
    4. Scores are smoothed with a centred ``pool`` of width ``kernel`` (an even kernel takes one more
       token on the left than on the right). Going down the scores, each chosen token brings its
       ``neighbourhood`` of tokens, nearest first, until ``budget`` tokens, the last ``window``
       included, are chosen; they keep their original order.

    With ``sparse_prefill`` (off by default; not in the paper), the draft reads a prompt longer than
    ``vertical + slash`` tokens sparsely: each query sees the ``vertical`` keys the window's queries
    attend to most (per layer and KV head, the maximum over its heads and those queries) and a band of
    the last ``slash`` keys, as SpecKV's target does (``sparse_kernel`` likewise). The lookahead and
    the scores then read every key of that cache: the scores are approximate, the method the same.

    Defaults are the paper's: budget 1024, window 64, kernel 64, neighbourhood 64, first layer 8,
    lookahead 1. Layers are counted in the draft; a draft with fewer layers uses its last layer, and
    sliding-window layers are skipped (with none full from `first_layer` on, all full layers are read).
    """

    name: ClassVar[str] = "specpc"
    widths: ClassVar[tuple[str, ...]] = ("kernel", "neighbourhood")

    @property
    def needs_draft(self) -> bool:
        return True

    budget: int = 1024
    window: int = 64
    lookahead: int = 1
    kernel: int = 64
    pool: Pool = "max"
    neighbourhood: int = 64
    first_layer: int = 8
    weighted_query: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("lookahead", self.lookahead)
        check_positive("kernel", self.kernel)
        check_positive("neighbourhood", self.neighbourhood)
        check_non_negative("first_layer", self.first_layer)
        self.check_sparse()

    def footprint(self, prompt_length: int, max_new_tokens: int) -> Footprint:
        """The draft reads the prompt and its lookahead, the last token included."""
        if not self.compresses(prompt_length):
            return Footprint(max_new_tokens, None)
        steps = self.lookahead
        rows = (self.window + steps) * (prompt_length + steps)
        return Footprint(max_new_tokens, steps + 1, steps, draft_rows=rows)

    @torch.no_grad()
    def token_scores(
        self, draft: nn.Module, input_ids: torch.Tensor, stop_ids: Iterable[int] = ()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each prompt token's importance from the draft's attention: ``(scores [n], lookahead_ids
        [1, m])``. The full-attention layers from ``first_layer`` on are read (all of them if there are
        none that deep); sliding-window layers are not, as they no longer hold the whole prompt."""
        input_ids = input_ids.to(draft.device)
        n = input_ids.shape[1]
        if self.window > n:
            raise ValueError(f"window ({self.window}) is larger than the prompt ({n} tokens)")
        modules = attention_modules(draft)
        first = min(self.first_layer, len(modules) - 1)
        cache = DynamicCache(config=draft.config)
        if self.sparse_for(n, 0, draft.device):
            reading = SparsePrefill(draft, self, _strongest, self.window)
        else:  # exact; sliding-window layers read only their band
            reading = windowed_prefill(draft, n)
        with QueryRecorder(draft, last=self.window) as recorder:
            with reading:
                out = draft(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            recorder.last = 1
            lookahead_ids = decode(
                draft, cache, out.logits[:, -1], n, self.lookahead, stop_ids=stop_ids, feed_last=True
            )
        steps = lookahead_ids.shape[1]
        query_positions = torch.arange(n - self.window, n + steps)
        window_weight = torch.linspace(0, 1, self.window) if self.weighted_query else torch.ones(self.window)
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
        return smooth(scores, self.kernel, self.pool), lookahead_ids

    def choose(self, scores: torch.Tensor) -> torch.Tensor:
        return select_tokens(scores.cpu(), self.budget, self.window, self.neighbourhood)


def _strongest(rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The sparse pre-fill's vertical ranking: each key's largest weight from any query head of its KV
    group and any observed query (rows ``[B, G, H/G, q, k]`` to ``[B, G, k]``)."""
    return rows.amax(dim=(2, 3))
