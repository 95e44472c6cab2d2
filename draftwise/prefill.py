"""Pre-filling the target, and pruning its cache by a KV method's scores (SpecKV, SnapKV, KNorm, ...)."""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import DynamicCache

from draftwise.acceptance import Verdict, accept
from draftwise.attention import QueryRecorder, attention_modules
from draftwise.cache import (
    keep_positions,
    prunable_layers,
    sliding_layers_drop,
)
from draftwise.decoding import Sampler
from draftwise.methods.base import KVMethod
from draftwise.sparse import SparsePrefill
from draftwise.windowed import windowed_prefill

if TYPE_CHECKING:
    from draftwise.methods.speckv import SpecKV


@dataclass
class Prefill:
    """A pre-filled (and maybe pruned) cache, ready to decode from after the prompt and the accepted
    lookahead (:mod:`draftwise.acceptance`)."""

    cache: DynamicCache  # pruned layers are draftwise.cache.PrunedLayer
    logits: torch.Tensor  # [1, V]: the target's next-token logits after the prompt and ``accepted``
    accepted: list[int] = field(
        default_factory=list
    )  # lookahead tokens accepted: their KV pairs follow the prompt's
    next_token: int | None = None  # the token after them, when a rejection decided it (sampling)


@dataclass
class Observed:
    """A plain pre-fill of the prompt, with the post-RoPE queries of its last positions per layer.

    One observed pre-fill serves every KV method (each compresses its own copy): it is what a method
    computes alone before it prunes.
    """

    cache: DynamicCache
    logits: torch.Tensor  # [1, V] at the last prompt position
    queries: dict[int, torch.Tensor]  # per layer [1, H, q, d], the last q prompt positions
    prompt_length: int


@torch.no_grad()
def observe(target: nn.Module, input_ids: torch.Tensor, queries: int) -> Observed:
    """Pre-fill ``input_ids`` ``[1, n]``, recording the queries of its last ``queries`` positions
    (sliding-window layers over their band only where that was measured faster:
    :mod:`draftwise.windowed`)."""
    input_ids = input_ids.to(target.device)
    cache = DynamicCache(config=target.config)
    with QueryRecorder(target, last=queries) as recorder, windowed_prefill(target, input_ids.shape[1]):
        out = target(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    recorded = {m.layer_idx: recorder.queries(m.layer_idx) for m in recorder.modules} if queries else {}
    return Observed(cache, out.logits[:, -1], recorded, input_ids.shape[1])


@torch.no_grad()
def prune_observed(
    target: nn.Module,
    observed: Observed,
    method: KVMethod | None,
    lookahead_ids: torch.Tensor | None = None,
    copy: bool = True,
    sampler: Sampler | None = None,
) -> Prefill:
    """Prune (a copy of) an observed cache with ``method``: pre-fill ``lookahead_ids`` ``[1, m]`` (if
    any) as a second chunk for their queries (and, if the method accepts it, the target's verdict on
    it, drawn with ``sampler``), keep each full-attention layer's best positions, drop the lookahead's
    KV pairs but the accepted ones'."""
    n = observed.prompt_length
    cache = deepcopy(observed.cache) if copy else observed.cache
    if method is None:
        return Prefill(cache, observed.logits)
    if method.window > n:
        raise ValueError(f"window ({method.window}) is larger than the prompt ({n} tokens)")
    last = method.observed_queries(n)
    queries = {layer: q[:, :, q.shape[2] - last :] for layer, q in observed.queries.items()} if last else {}
    verdict, logits = Verdict([]), observed.logits
    if lookahead_ids is not None and lookahead_ids.numel():
        lookahead_ids = lookahead_ids.to(target.device)
        m = lookahead_ids.shape[1]
        with (
            QueryRecorder(target, last=m) as recorder,
            sliding_layers_drop(cache, m) as drop,  # the sliding layers end holding the prompt alone
        ):
            out = target(
                input_ids=lookahead_ids,
                past_key_values=cache,
                position_ids=torch.arange(n, n + m, device=target.device)[None],
                use_cache=True,
                logits_to_keep=m if method.accepts_lookahead else 1,
            )
            if method.accepts_lookahead:
                verdict, logits = _verdict(observed.logits, out.logits, lookahead_ids, sampler)
                drop.tokens = m - len(verdict.accepted)  # the accepted stay, as answer tokens
        queries = {layer: torch.cat([q, recorder.queries(layer)], dim=2) for layer, q in queries.items()}
    prune(target, cache, queries, n, method, accepted=len(verdict.accepted))
    return Prefill(cache, logits, verdict.accepted, verdict.next_token)


def _verdict(
    prompt_logits: torch.Tensor, lookahead_logits: torch.Tensor, lookahead_ids: torch.Tensor, sampler
) -> tuple[Verdict, torch.Tensor]:
    """The target's verdict on the lookahead (:func:`draftwise.acceptance.accept`) from its logits after
    the prompt ``[1, V]`` and at each lookahead position ``[1, m, V]``, and its logits ``[1, V]`` after
    the accepted tokens."""
    logits = torch.cat([prompt_logits[:, None].to(lookahead_logits), lookahead_logits], dim=1)[0]
    verdict = accept(logits, lookahead_ids[0], sampler)
    k = len(verdict.accepted)
    return verdict, logits[k : k + 1]


@torch.no_grad()
def prefill(
    target: nn.Module,
    input_ids: torch.Tensor,
    method: KVMethod | None = None,
    lookahead_ids: torch.Tensor | None = None,
    sampler: Sampler | None = None,
) -> Prefill:
    """Pre-fill ``input_ids`` ``[1, n]``; with ``method``, prune the cache to its budget.

    With a method, the last queries it observes are recorded during the pre-fill, ``lookahead_ids``
    ``[1, m]`` (if any) are pre-filled as a second chunk to record their queries, then every
    full-attention layer keeps its budget of best positions and the lookahead's KV pairs are dropped,
    but those of the tokens the target accepted (if the method accepts a lookahead; drawn with
    ``sampler`` when it samples).
    """
    n = input_ids.shape[1]
    if method is not None and method.window > n:
        raise ValueError(f"window ({method.window}) is larger than the prompt ({n} tokens)")
    steps = lookahead_ids.shape[1] if lookahead_ids is not None else 0
    if method is not None and method.sparse_for(n, steps, target.device):
        return prefill_sparse(target, input_ids.to(target.device), method, lookahead_ids, sampler)
    observed = observe(target, input_ids, method.observed_queries(n) if method is not None else 0)
    return prune_observed(target, observed, method, lookahead_ids, copy=False, sampler=sampler)


def prefill_sparse(
    target: nn.Module,
    input_ids: torch.Tensor,
    method: SpecKV,
    lookahead_ids: torch.Tensor | None,
    sampler: Sampler | None = None,
) -> Prefill:
    """One sparse pass over prompt and lookahead (SpecKV step 5), then the usual pruning. The target's
    verdict on the lookahead is from this sparse pass."""
    n = input_ids.shape[1]
    steps = lookahead_ids.shape[1] if lookahead_ids is not None else 0
    sequence = torch.cat([input_ids, lookahead_ids.to(input_ids.device)], dim=1) if steps else input_ids
    cache = DynamicCache(config=target.config)
    observed = method.window + steps
    accepting = bool(steps) and method.accepts_lookahead
    keep = torch.arange(n - 1, n + steps if accepting else n, device=target.device)
    verdict = Verdict([])
    with (
        sliding_layers_drop(cache, steps) as drop,  # the sliding layers end holding the prompt alone
        QueryRecorder(target, last=observed) as recorder,
        SparsePrefill(target, method, method.score, observed),
    ):
        out = target(input_ids=sequence, past_key_values=cache, use_cache=True, logits_to_keep=keep)
        logits = out.logits[:, -1]
        if accepting:
            verdict, logits = _verdict(out.logits[:, 0], out.logits[:, 1:], lookahead_ids, sampler)
            drop.tokens = steps - len(verdict.accepted)
    queries = {m.layer_idx: recorder.queries(m.layer_idx) for m in recorder.modules}
    prune(target, cache, queries, n, method, accepted=len(verdict.accepted))
    return Prefill(cache, logits, verdict.accepted, verdict.next_token)


def prune(
    target: nn.Module,
    cache: DynamicCache,
    queries: dict[int, torch.Tensor],
    n: int,
    method: KVMethod,
    accepted: int = 0,
) -> None:
    """Keep, per full-attention layer and KV head, the ``layer_budget - window`` prefix positions
    ``method.select`` picks by ``method.layer_scores`` from the observed ``queries`` (per layer
    ``[1, H, q, d]``, the prompt's last ones then the lookahead's), plus the window; drop everything
    past the prompt (the lookahead) but its first ``accepted`` tokens, kept after the prompt as answer
    tokens. Each such layer becomes a :class:`~draftwise.cache.PrunedLayer`, with the mask of its
    padding when its heads keep unequal counts."""
    modules = attention_modules(target)
    prefix = n - method.window
    first_observed = n - method.observed_queries(n)
    layers = prunable_layers(cache)
    for index, layer in enumerate(layers):
        keys = cache.layers[layer].keys
        seen = queries.get(layer) if method.uses_attention else None
        positions = torch.arange(first_observed, first_observed + (0 if seen is None else seen.shape[2]))
        values = cache.layers[layer].values
        scores = method.layer_scores(modules[layer], seen, keys, values, positions, prefix)
        chosen, valid = method.select(scores, method.layer_budget(index, len(layers)) - method.window)
        window = torch.arange(prefix, n, device=chosen.device).expand(*chosen.shape[:2], -1)
        if valid is not None:
            valid = torch.cat([valid, torch.ones_like(window, dtype=torch.bool)], dim=-1)
        after = torch.arange(n, n + accepted, device=chosen.device) if accepted else None
        keep_positions(cache, layer, torch.cat([chosen, window], dim=-1), valid, after)
