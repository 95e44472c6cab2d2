"""Slow, obviously correct references of what each method keeps, written from ``shared/METHODS.md`` and
the methods' docstrings.

Nothing here calls draftwise. Attention probabilities come from transformers' own ``eager`` forward
(``output_attentions=True``), keys and values from its own cache, and every reduction, pooling, top-k,
allocation and selection is a plain Python loop over floats. Ties go to the earlier position (then,
across heads, to the earlier head), as the library documents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import nn

Scores = list[float]


# ---- the model, read through transformers alone ----


def full_layers(model: nn.Module) -> list[int]:
    """The layers whose attention sees the whole sequence (not Gemma 3's sliding-window ones)."""
    kinds = getattr(model.config, "layer_types", None) or ["full_attention"] * model.config.num_hidden_layers
    return [i for i, kind in enumerate(kinds) if kind == "full_attention"]


@dataclass
class EagerPass:
    """One eager forward over a token sequence: per layer, attention ``[H, T, T]``, keys and values
    ``[G, T, d]`` (float32; full-attention layers only), and the logits ``[T, V]``."""

    attentions: dict[int, torch.Tensor]
    keys: dict[int, torch.Tensor]
    values: dict[int, torch.Tensor]
    logits: torch.Tensor


@torch.no_grad()
def eager_pass(model: nn.Module, ids: list[int]) -> EagerPass:
    if model.config._attn_implementation != "eager":
        raise ValueError("the reference reads attention probabilities from an eager model")
    out = model(input_ids=torch.tensor([ids]), output_attentions=True, use_cache=True)
    layers = full_layers(model)
    cache = out.past_key_values
    return EagerPass(
        {i: out.attentions[i][0].float() for i in layers},
        {i: cache.layers[i].keys[0].float() for i in layers},
        {i: cache.layers[i].values[0].float() for i in layers},
        out.logits[0].float(),
    )


@torch.no_grad()
def greedy(model: nn.Module, ids: list[int], steps: int, stop: set[int]) -> list[int]:
    """``steps`` greedy tokens, each from a fresh forward over the whole sequence; a stop token ends it
    (and is kept)."""
    sequence, out = list(ids), []
    for _ in range(steps):
        token = int(model(input_ids=torch.tensor([sequence])).logits[0, -1].argmax())
        out.append(token)
        sequence.append(token)
        if token in stop:
            break
    return out


# ---- scores and choices, as plain loops ----


def pool(scores: Scores, kernel: int, kind: str) -> Scores:
    """Centred pooling: position ``i`` takes the max (or mean) of ``i - kernel//2 .. i + (kernel-1)//2``,
    over the positions that exist."""
    left, right = kernel // 2, (kernel - 1) // 2
    out = []
    for i in range(len(scores)):
        span = scores[max(0, i - left) : i + right + 1]
        out.append(max(span) if kind == "max" else sum(span) / len(span))
    return out


def ranked(scores: Scores) -> list[int]:
    """Positions from the highest score down; equal scores in position order."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def top(scores: Scores, count: int) -> list[int]:
    """The ``count`` best positions, ascending."""
    return sorted(ranked(scores)[:count])


def well_posed(scores: Scores, count: int, tolerance: float = 1e-5) -> bool:
    """Whether the top ``count`` of ``scores`` is a clear choice: the last kept and the first dropped
    are either equal (a tie the position breaks) or apart by more than ``tolerance`` (relative), so a
    float32 recomputation cannot flip it."""
    if count <= 0 or count >= len(scores):
        return True
    order = ranked(scores)
    a, b = scores[order[count - 1]], scores[order[count]]
    return a == b or a - b > tolerance * max(abs(a), abs(b), 1e-30)


def group_rows(attention: torch.Tensor, groups: int) -> list[torch.Tensor]:
    """Split attention ``[H, q, k]`` into the ``G`` KV groups' ``[H/G, q, k]`` (query head ``h`` reads
    KV head ``h // (H/G)``)."""
    size = attention.shape[0] // groups
    return [attention[g * size : (g + 1) * size] for g in range(groups)]


def caote(attention: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """CAOTE on one KV group: ``a -> a / (1 - a) * ||v - o||`` with ``o = sum_j a_j v_j``, for attention
    ``[h, q, k]`` over values ``[k, d]``."""
    out = torch.empty_like(attention)
    v = values.double()
    for h in range(attention.shape[0]):
        for q in range(attention.shape[1]):
            row = attention[h, q].double()
            o = (row[:, None] * v).sum(0)
            distance = (v - o).norm(dim=-1)  # [k]
            out[h, q] = (row / (1 - row).clamp_min(1e-6) * distance).float()
    return out


def snapkv_layer_scores(
    attention: torch.Tensor,
    values: torch.Tensor,
    groups: int,
    n: int,
    window: int,
    kernel: int,
    pool_kind: str = "max",
    reduce: str = "max",
    use_caote: bool = False,
) -> list[Scores]:
    """SnapKV's (SpecKV's with a lookahead) scores of one layer, per KV head: the attention of the
    queries at ``n - window ..`` (the window, then any lookahead) over the ``n - window`` prefix keys,
    reduced over the group's query heads and the queries, then pooled. ``attention`` ``[H, T, T]``
    comes from a forward over prompt and lookahead; ``values`` ``[G, T, d]`` (for CAOTE)."""
    prefix = n - window
    out = []
    for g, rows in enumerate(group_rows(attention[:, n - window :, :], groups)):
        if use_caote:
            rows = caote(rows, values[g])
        rows = rows[:, :, :prefix]
        per_key = []
        for j in range(prefix):
            column = [float(x) for x in rows[:, :, j].flatten()]
            per_key.append(max(column) if reduce == "max" else sum(column) / len(column))
        out.append(pool(per_key, kernel, pool_kind))
    return out


def pyramid_counts(spare: int, layers: int, beta: int) -> list[int]:
    """PyramidKV's per-layer counts beyond the window: falling linearly from ``2*spare - spare/beta``
    to ``spare/beta`` (exact rationals, floored), the remainder to reach ``spare * layers`` going one
    each to the first layers."""
    if layers == 1:
        return [spare]
    low = Fraction(spare, beta)
    high = 2 * spare - low
    counts = [math.floor(high - (high - low) * i / (layers - 1)) for i in range(layers)]
    for i in range(spare * layers - sum(counts)):
        counts[i % layers] += 1
    return counts


def adakv_choice(scores: list[Scores], count: int, floor: float) -> list[list[int]]:
    """AdaKV's allocation of ``G * count`` places in a layer: each head first takes its own top
    ``int(floor * count)``; the remaining places go to the best remaining scores of any head (ties:
    earlier position, then earlier head). Returns each head's kept positions, ascending."""
    count = min(count, len(scores[0]))
    guaranteed = int(floor * count)
    kept = [set(ranked(head)[:guaranteed]) for head in scores]
    rest = [(-s, j, g) for g, head in enumerate(scores) for j, s in enumerate(head) if j not in kept[g]]
    for _, j, g in sorted(rest)[: len(scores) * (count - guaranteed)]:
        kept[g].add(j)
    return [sorted(k) for k in kept]


def neighbourhood(size: int) -> list[int]:
    """Offsets of a centred neighbourhood, nearest first: 0, -1, +1, -2, +2, ..."""
    offsets = [0]
    for step in range(1, size):
        offsets += [-step, step]
    return offsets[:size]


def choose_tokens(scores: Scores, budget: int, window: int, size: int = 1) -> list[int]:
    """SpecPC's choice: the last ``window`` tokens, then, going down the scores (ties: earlier first),
    each token and its ``size``-token neighbourhood (nearest first, inside the prefix, skipping kept
    ones) until ``budget`` tokens are kept; original order."""
    n = len(scores)
    if budget >= n:
        return list(range(n))
    prefix = n - window
    kept: set[int] = set()
    for centre in ranked(scores[:prefix]):
        for offset in neighbourhood(size):
            j = centre + offset
            if len(kept) + window < budget and 0 <= j < prefix:
                kept.add(j)
        if len(kept) + window == budget:
            break
    return sorted(kept) + list(range(prefix, n))


def specpc_token_scores(
    attention: dict[int, torch.Tensor],
    n: int,
    window: int,
    steps: int,
    first_layer: int,
    layers: int,
    full: list[int],
    weighted: bool,
    kernel: int,
    pool_kind: str = "max",
) -> Scores:
    """SpecPC's score of each of ``n`` prompt tokens from the draft's attention ``[H, T, T]`` per layer
    over prompt and ``steps`` lookahead tokens: window queries weighted 0 (oldest) to 1 (newest) if
    ``weighted``, lookahead queries 1; max over heads, queries and layers (full-attention ones from
    ``min(first_layer, layers - 1)`` on, or all full ones if none is that deep); pooled."""
    first = min(first_layer, layers - 1)
    read = [i for i in full if i >= first] or full
    weights = [(k / (window - 1) if window > 1 else 0.0) if weighted else 1.0 for k in range(window)]
    weights += [1.0] * steps
    scores = [0.0] * n
    for layer in read:
        rows = attention[layer][:, n - window : n + steps, :n]  # [H, window + steps, n]
        for q, weight in enumerate(weights):
            best = rows[:, q, :].amax(dim=0).tolist()
            scores = [max(s, weight * b) for s, b in zip(scores, best, strict=True)]
    return pool(scores, kernel, pool_kind)


def specpc_well_posed(scores: Scores, window: int, tolerance: float = 1e-5) -> bool:
    """Whether SpecPC's choice is clear: no two prefix scores that differ are within ``tolerance``
    (relative) of each other, so a float32 recomputation ranks them the same."""
    values = sorted(set(scores[: len(scores) - window]))
    return all(b - a > tolerance * max(abs(b), 1e-30) for a, b in zip(values, values[1:], strict=False))


def rope(x: torch.Tensor, positions: list[int], theta: float) -> torch.Tensor:
    """Rotary embedding of ``x`` ``[..., T, d]`` at ``positions``: pairs ``(i, i + d/2)`` rotate by
    ``position / theta ** (2i / d)`` (the half-split layout of Llama-family models)."""
    d = x.shape[-1]
    inverse = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = torch.tensor(positions, dtype=torch.float64)[:, None] * inverse[None, :]  # [T, d/2]
    cos, sin = angles.cos().float(), angles.sin().float()
    first, second = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def attention_probabilities(
    queries: torch.Tensor, keys: torch.Tensor, query_positions: list[int], scaling: float
) -> torch.Tensor:
    """Causal softmax ``[H, q, k]`` of queries ``[H, q, d]`` over keys ``[G, k, d]`` (float64)."""
    heads, groups = queries.shape[0], keys.shape[0]
    size = heads // groups
    out = torch.zeros(heads, queries.shape[1], keys.shape[1], dtype=torch.float64)
    for h in range(heads):
        logits = queries[h].double() @ keys[h // size].double().T * scaling
        for q, position in enumerate(query_positions):
            row = logits[q].clone()
            row[position + 1 :] = float("-inf")
            out[h, q] = row.softmax(-1)
    return out
