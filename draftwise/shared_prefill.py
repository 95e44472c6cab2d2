"""Work on one prompt that several generations may share (benchmarks comparing methods).

The target's plain pre-fill and the draft's lookaheads do not depend on the KV method, so a benchmark
may compute them once per prompt and let each KV method compress its own copy. Each method's answer
is exactly what it gives alone (tested), and its reported seconds include the shared work, as if it
had run alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from copy import deepcopy

import torch
from torch import nn
from transformers import DynamicCache

from draftwise.decoding import Sampler
from draftwise.draft import lookahead_with_cache
from draftwise.methods.base import KVMethod
from draftwise.prefill import Observed, Prefill, observe, prefill, prune_observed
from draftwise.timing import now


class SharedPrefill:
    """Shared work for one prompt (its plain pre-fill and the draft's lookaheads): pass the same
    instance to each ``generate(..., reuse=...)`` call.

    ``observed_queries`` is the most trailing prompt queries any method will observe (its window; all
    ``n`` for H2O).
    """

    def __init__(self, observed_queries: int) -> None:
        self.observed_queries = observed_queries
        self._observed: Observed | None = None
        self._observe_seconds = 0.0
        self._lookaheads: dict[int, tuple[torch.Tensor, float]] = {}
        self._lookahead_cache: DynamicCache | None = None  # the draft's cache of the prompt
        self._draft_prefill: tuple[DynamicCache, float] | None = None

    def lookahead(
        self, draft: nn.Module, input_ids: torch.Tensor, steps: int, stop_ids: Iterable[int]
    ) -> tuple[torch.Tensor, float]:
        """The draft's ``steps``-token lookahead and the seconds it took (computed once per length)."""
        if steps not in self._lookaheads:
            start = now()
            ids, self._lookahead_cache = lookahead_with_cache(draft, input_ids, steps, stop_ids)
            self._lookaheads[steps] = (ids, now() - start)
        return self._lookaheads[steps]

    def lookahead_cache(self) -> DynamicCache | None:
        """A copy of the draft's cache of the prompt that a lookahead left, if one ran."""
        return None if self._lookahead_cache is None else deepcopy(self._lookahead_cache)

    def draft_prefill(self, draft: nn.Module, input_ids: torch.Tensor) -> tuple[DynamicCache, float]:
        """A copy of the draft's plain pre-fill of the prompt, and the seconds it took (computed once)."""
        if self._draft_prefill is None:
            start = now()
            cache = prefill(draft, input_ids).cache
            self._draft_prefill = (cache, now() - start)
        cache, seconds = self._draft_prefill
        return deepcopy(cache), seconds

    def prefill(
        self,
        target: nn.Module,
        input_ids: torch.Tensor,
        method: KVMethod | None,
        lookahead_ids: torch.Tensor | None,
        sampler: Sampler | None = None,
    ) -> tuple[Prefill, float]:
        """``method``'s pre-fill from a copy of the shared one, and its seconds (shared part included)."""
        if self._observed is None:
            start = now()
            self._observed = observe(target, input_ids, self.observed_queries)
            self._observe_seconds = now() - start
        elif self._observed.prompt_length != input_ids.shape[1]:
            raise ValueError("a shared pre-fill serves one prompt; this one differs from the first")
        n = input_ids.shape[1]
        if method is not None and method.observed_queries(n) > self.observed_queries:
            raise ValueError(
                f"{method.name} observes {method.observed_queries(n)} queries; "
                f"the shared pre-fill recorded {self.observed_queries}"
            )
        start = now()
        prefilled = prune_observed(target, self._observed, method, lookahead_ids, copy=True, sampler=sampler)
        return prefilled, self._observe_seconds + now() - start
