"""Decoding many sequences together over their own (possibly pruned) caches.

Each sequence arrives with the cache its method left (a ``DynamicCache`` of one row: full layers,
:class:`~draftwise.cache.PrunedLayer`\\ s, sliding-window layers) and the logits of its last prompt
position. :class:`BatchDecoder` merges the caches into one batched cache, layer by layer, left-padding
each row to the longest (the padding marked in each layer's ``valid`` mask and never attended, as
AdaKV's padding is: :class:`~draftwise.headmask.HeadMaskedAttention`), and runs one forward per step
for every running row, each at its own true position. A row leaves when it is done (its entries are
dropped at once); a row may join between any two steps.

Left padding keeps the rows aligned on the right, where every step appends one token per row, so a
sliding-window layer's "last ``window - 1`` entries" are the same columns for every row and
transformers' own window trimming serves all rows at once.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from draftwise.acceptance import verified_tokens
from draftwise.cache import LayerMasks, head_masks
from draftwise.chunk_attention import ChunkAttention, placeholder_mask
from draftwise.decoding import Sampler, ending
from draftwise.headmask import HeadMaskedAttention
from draftwise.prefill import Prefill
from draftwise.speculative import Drafter, PromptLookup, SpeculativeStats, proposals

Proposer = Drafter | PromptLookup


class BatchLayer(DynamicLayer):
    """A full-attention layer holding several rows left-padded to one length.

    ``valid`` ``[B, G, L0]`` marks the real entries among the first ``L0``; entries appended later
    (decoded tokens, one per row per step) are always real.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor | None) -> None:
        super().__init__()
        self.dtype, self.device = keys.dtype, keys.device
        self.keys, self.values = keys, values
        self.is_initialized = True
        self.valid = valid

    def drop_last(self, counts: torch.Tensor) -> None:
        """Row ``i`` drops the last ``counts[i]`` entries it received (:func:`drop_last`)."""
        self.keys, self.values, self.valid = drop_last(_row_states(self), counts)


class BatchSlidingLayer(DynamicSlidingWindowLayer):
    """A sliding-window layer holding several rows, left-padded: ``valid`` ``[B, G, L]`` marks the real
    entries of the states the last :meth:`update` returned (the held ones and the new token)."""

    def __init__(
        self, sliding_window: int, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor | None
    ) -> None:
        super().__init__(sliding_window)
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values
        self.cumulative_length = keys.shape[2]
        self.valid = valid

        self.trial = False  # while True, updates keep every state until drop_last

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        held = self.keys.shape[2]
        if self.trial:  # every state kept (and returned) until drop_last settles the window
            self.cumulative_length += key_states.shape[2]
            self.keys = torch.cat([self.keys, key_states], dim=-2)
            self.values = torch.cat([self.values, value_states], dim=-2)
            keys, values = self.keys, self.values
        else:
            keys, values = super().update(key_states, value_states, *args, **kwargs)
        if self.valid is not None:
            new = self.valid.new_ones(*self.valid.shape[:2], key_states.shape[2])
            self.valid = torch.cat([self.valid[..., self.valid.shape[-1] - held :], new], dim=-1)
            if self.valid.all():
                self.valid = None  # the padding has slid out of the window
        return keys, values

    def drop_last(self, counts: torch.Tensor) -> None:
        """End a trial: row ``i`` drops the last ``counts[i]`` states it received (:func:`drop_last`),
        and every row returns to its window."""
        if not self.trial:
            raise RuntimeError("drop_last needs a trial: set .trial before the forward")
        keys, values, valid = drop_last(_row_states(self), counts)
        held = self.sliding_window - 1
        keys, values, valid = (
            keys[:, :, -held:],
            values[:, :, -held:],
            None if valid is None else valid[..., -held:],
        )
        self.keys, self.values = keys, values
        self.valid = None if valid is None or valid.all() else valid
        self.cumulative_length -= int(counts.min())
        self.trial = False


def _row_states(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A layer's keys, values ``[B, G, L, d]`` and the mask of their real entries (``None``: all)."""
    valid = getattr(layer, "valid", None)
    length = layer.keys.shape[2]
    if valid is not None and valid.shape[-1] != length:
        if valid.shape[-1] < length:  # the decoded tokens after a pruned prompt
            valid = torch.cat([valid, valid.new_ones(*valid.shape[:2], length - valid.shape[-1])], dim=-1)
        else:  # a sliding layer's mask covers its last returned states: keep the held ones
            valid = valid[..., valid.shape[-1] - length :]
    return layer.keys, layer.values, valid


def _left_pad(states, length: int):
    keys, values, valid = states
    batch, heads, held, _ = keys.shape
    if valid is None:
        valid = torch.ones(batch, heads, held, dtype=torch.bool, device=keys.device)
    missing = length - held
    if missing == 0:
        return keys, values, valid
    pad = (0, 0, missing, 0)
    return (
        torch.nn.functional.pad(keys, pad),
        torch.nn.functional.pad(values, pad),
        torch.nn.functional.pad(valid, (missing, 0), value=False),
    )


def merge_layers(layers: list[DynamicLayer]) -> DynamicLayer:
    """One batched layer from layers of the same model (each one or more rows), left-padded."""
    states = [_row_states(layer) for layer in layers]
    length = max(keys.shape[2] for keys, _, _ in states)
    if all(valid is None and keys.shape[2] == length for keys, _, valid in states):
        keys = torch.cat([keys for keys, _, _ in states], dim=0)
        values = torch.cat([values for _, values, _ in states], dim=0)
        valid = None
    else:
        padded = [_left_pad(s, length) for s in states]
        keys, values, valid = (torch.cat(part, dim=0) for part in zip(*padded, strict=True))
    return _batch_layer(layers[0], keys, values, valid)


def select_rows(layer: DynamicLayer, rows: torch.Tensor) -> DynamicLayer:
    """``layer`` keeping batch rows ``rows``; columns that are padding in every kept row are dropped."""
    keys, values, valid = _row_states(layer)
    keys, values = keys.index_select(0, rows), values.index_select(0, rows)
    valid = None if valid is None else valid.index_select(0, rows)
    return _batch_layer(layer, *_trim(keys, values, valid))


def _trim(keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor | None):
    """Without the leading columns that are padding in every row (``valid`` ``None`` once all real)."""
    if valid is None:
        return keys, values, None
    real = valid.any(dim=1).any(dim=0).nonzero()
    start = int(real[0]) if real.numel() else valid.shape[-1]
    keys, values, valid = keys[:, :, start:], values[:, :, start:], valid[..., start:]
    return keys, values, None if valid.all() else valid


def drop_last(states, counts: torch.Tensor):
    """Row ``i`` of ``states`` (keys, values ``[B, G, L, d]``, ``valid`` ``[B, G, L]`` or ``None``) without
    its last ``counts[i]`` entries: each row moves right by its count, so rows stay right-aligned and
    the freed columns become left padding; columns that are padding in every row are then trimmed."""
    keys, values, valid = states
    batch, heads, length, _ = keys.shape
    shift = counts.to(keys.device)[:, None]  # [B, 1]
    column = torch.arange(length, device=keys.device)[None]  # [1, L]
    source = (column - shift).clamp(min=0)  # [B, L]: the column each entry comes from
    index = source[:, None, :, None].expand(-1, heads, -1, 1)
    keys = keys.gather(2, index.expand(-1, -1, -1, keys.shape[-1]))
    values = values.gather(2, index.expand(-1, -1, -1, values.shape[-1]))
    real = (column >= shift)[:, None].expand(-1, heads, -1)
    valid = real if valid is None else valid.gather(2, index[..., 0]) & real
    return _trim(keys, values, valid)


def _batch_layer(like: DynamicLayer, keys: torch.Tensor, values: torch.Tensor, valid) -> DynamicLayer:
    """A batch layer of ``like``'s kind (sliding-window or full attention) holding these states."""
    if isinstance(like, DynamicSlidingWindowLayer):
        return BatchSlidingLayer(like.sliding_window, keys, values, valid)
    return BatchLayer(keys, values, valid)


@dataclass(eq=False)  # rows compare by identity
class Row:
    """One sequence decoding in a batch.

    ``cache`` ``[1, ...]`` and ``logits`` ``[1, V]`` are what pre-fill left; ``position`` is the true
    position of the first new token: the length of the prompt as the target read it (the whole
    prompt for KV methods, the kept tokens for prompt methods). ``on_token`` is called with each new
    token; ``True`` ends the row after it (a stop string), an exception it raises ends the row and is
    kept in ``error``.
    """

    cache: DynamicCache
    logits: torch.Tensor
    position: int
    max_new_tokens: int
    sampler: Sampler = field(default_factory=Sampler)
    stop_ids: frozenset[int] = frozenset()
    on_token: Callable[[int], bool | None] | None = None
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" or "length" once done; "error" if on_token raised
    error: BaseException | None = None
    # the lookahead tokens the target accepted (already in ``cache``), and the token after them when
    # a rejection chose it (draftwise.acceptance); taken before the row joins
    verified: list[int] = field(default_factory=list)
    first_token: int | None = None
    accepted: int = 0  # verified tokens that became answer tokens
    # speculative decoding: who proposes this row's next tokens (draftwise.speculative), and its tally
    proposer: Proposer | None = None
    drafting: SpeculativeStats = field(default_factory=SpeculativeStats)

    @classmethod
    def after(cls, prefilled: Prefill, prompt_length: int, max_new_tokens: int, sampler: Sampler) -> Row:
        """The row that decodes on from ``prefilled`` (a prompt the target read as ``prompt_length``
        tokens), its accepted lookahead first."""
        return cls(
            prefilled.cache,
            prefilled.logits,
            prompt_length,
            max_new_tokens,
            sampler,
            verified=list(prefilled.accepted),
            first_token=prefilled.next_token,
        )

    def take(self, token: int) -> bool:
        """Record ``token``; True when the row is done."""
        self.tokens.append(token)
        self.position += 1
        try:
            self.finish_reason = ending(self.tokens, self.max_new_tokens, self.stop_ids, self.on_token)
        except Exception as error:  # noqa: BLE001  (a client gone: the row ends, the batch goes on)
            self.error, self.finish_reason = error, "error"
        return self.finish_reason is not None

    def propose(self) -> tuple[list[int], torch.Tensor | None]:
        """The proposer's next tokens for this row (none without one), leaving room for the target's."""
        if self.proposer is None:
            return [], None
        room = self.max_new_tokens - len(self.tokens)
        proposed, distributions = proposals(self.proposer, self.tokens, room, self.stop_ids)
        self.drafting.rounds += 1
        self.drafting.drafted += len(proposed)
        return proposed, distributions


class BatchDecoder:
    """Rows decoding together: :meth:`add` a row (it takes its first token at once), :meth:`step`
    until :attr:`rows` is empty. Each step is one forward of ``model`` over every running row.

    Needs ``eager`` or ``sdpa`` attention (the padding is masked per row and head).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.rows: list[Row] = []
        self.cache = DynamicCache(config=model.config)  # one object; its layers are replaced in place
        self.cache.layers = []
        # one override for every step, so each layer's mask is built once per batch composition
        self._padding = HeadMaskedAttention(model, LayerMasks(self.cache))
        self._chunk = ChunkAttention(model, self.cache)  # several tokens a row (speculative decoding)

    def add(self, row: Row) -> bool:
        """Take ``row``'s first token; if it is not done at once, it joins the batch. Returns whether it
        joined."""
        for token in row.verified:
            row.accepted += 1
            if row.take(token):
                return False
        token = row.first_token if row.first_token is not None else int(row.sampler(row.logits)[0])
        if row.take(token):
            return False
        if self.rows:
            pairs = zip(self.cache.layers, row.cache.layers, strict=True)
            self.cache.layers = [merge_layers([mine, theirs]) for mine, theirs in pairs]
        else:
            self.cache.layers = [merge_layers([layer]) for layer in row.cache.layers]
        row.cache = None  # its entries live in the batch now
        self.rows.append(row)
        return True

    def step(self) -> list[Row]:
        """One token for every running row, or more where its proposer's tokens are accepted
        (speculative decoding); returns the rows that finished (and left the batch)."""
        if not self.rows:
            return []
        offers = [row.propose() for row in self.rows]
        speculating = any(proposed for proposed, _ in offers)
        finished = self._verify(offers) if speculating else self._decode()
        if finished:
            self._leave(finished)
        return finished

    def _decode(self) -> list[Row]:
        """One token for every row; the rows done."""
        model, device = self.model, self.model.device
        tokens = torch.tensor([[row.tokens[-1]] for row in self.rows], device=device)
        positions = torch.tensor([[row.position - 1] for row in self.rows], device=device)
        # As in decode(): every key is visible to each new token, so eager attention gets a broadcast
        # zero mask (fitting layers of any length) and sdpa none; padding, where rows differ in length,
        # is hidden per layer and head by the head mask.
        visible = None
        if model.config._attn_implementation == "eager":
            visible = torch.zeros(1, 1, 1, 1, dtype=model.dtype, device=device)
        with self._padding if head_masks(self.cache) else nullcontext():
            out = model(
                input_ids=tokens,
                past_key_values=self.cache,
                position_ids=positions,
                attention_mask=visible,
                use_cache=True,
                logits_to_keep=1,
            )
        logits = out.logits[:, -1]
        chosen = [int(row.sampler(logits[i : i + 1])[0]) for i, row in enumerate(self.rows)]
        return [row for row, token in zip(self.rows, chosen, strict=True) if row.take(token)]

    def _verify(self, offers: list[tuple[list[int], torch.Tensor | None]]) -> list[Row]:
        """Every row reads its last token and its proposals in one forward (rows with fewer are padded
        on the right: the causal chunk mask keeps the padding out of their logits), keeps the prefix its
        target accepts plus one token of its own, and drops the rest of the chunk from the cache:
        rows accept different counts and stay right-aligned (:meth:`BatchLayer.drop_last`)."""
        model, device = self.model, self.model.device
        width = 1 + max(len(proposed) for proposed, _ in offers)
        chunks = [[row.tokens[-1], *proposed] for row, (proposed, _) in zip(self.rows, offers, strict=True)]
        tokens = torch.tensor([chunk + chunk[-1:] * (width - len(chunk)) for chunk in chunks], device=device)
        start = torch.tensor([[row.position - 1] for row in self.rows], device=device)
        sliding = [layer for layer in self.cache.layers if isinstance(layer, BatchSlidingLayer)]
        for layer in sliding:
            layer.trial = True
        with self._chunk:
            out = model(
                input_ids=tokens,
                past_key_values=self.cache,
                position_ids=start + torch.arange(width, device=device),
                attention_mask=placeholder_mask(model),
                use_cache=True,
                logits_to_keep=width,
            )
        taken = []  # per row: its accepted proposals, then the target's own token
        for i, (row, (proposed, distributions)) in enumerate(zip(self.rows, offers, strict=True)):
            logits = out.logits[i, : len(proposed) + 1]
            taken.append(verified_tokens(logits, proposed, row.sampler, distributions))
            row.drafting.accepted += len(taken[-1]) - 1
        # each row keeps its last token and the accepted proposals; its rejected ones and padding go
        drops = torch.tensor([width - len(tokens) for tokens in taken], device=device)
        for layer in self.cache.layers:
            layer.drop_last(drops)
        return [
            row
            for row, tokens in zip(self.rows, taken, strict=True)
            if any(row.take(token) for token in tokens)
        ]

    def remove(self, row: Row) -> None:
        """Take ``row`` out of the batch now (a client went away)."""
        if row in self.rows:
            self._leave([row])

    def _leave(self, rows: list[Row]) -> None:
        keep = [i for i, row in enumerate(self.rows) if row not in rows]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache.layers = []
            return
        index = torch.tensor(keep, device=self.cache.layers[0].keys.device)
        self.cache.layers = [select_rows(layer, index) for layer in self.cache.layers]
