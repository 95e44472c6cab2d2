"""What every compression method shares: a budget, the validation of its options, and what it costs."""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import ClassVar, Literal

import torch
from torch import nn

from draftwise.attention import module_attention_rows
from draftwise.flex_sparse import fused_available
from draftwise.scoring import caote_correction, top_indices
from draftwise.token_selection import select_tokens

Pool = Literal["max", "avg"]
Reduce = Literal["max", "mean"]
SparseKernel = Literal["auto", "flex", "reference"]


class OptionError(ValueError):
    """A method option that is out of its range; ``option`` names it (e.g. ``"kernel"``)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


# The range checks below run after check_types (Method.__post_init__), which has refused other types.


def check_positive(name: str, value: int) -> None:
    if value <= 0:
        raise OptionError(name, f"{name} must be a positive integer, got {value!r}")


def check_non_negative(name: str, value: int) -> None:
    if value < 0:
        raise OptionError(name, f"{name} must be a non-negative integer, got {value!r}")


def check_share(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise OptionError(name, f"{name} must be a share in [0, 1], got {value!r}")


def check_budget_and_window(method: object, budget: str, window: str) -> None:
    """The fields named ``budget`` and ``window`` are positive and the budget holds the window."""
    kept, last = getattr(method, budget), getattr(method, window)
    check_positive(budget, kept)
    check_positive(window, last)
    if kept < last:
        which = "the window" if window == "window" else f"the window, {window}"
        raise OptionError(
            budget,
            f"{budget} ({kept}) must be at least {which} ({last}): "
            "the window of the last tokens is always kept",
        )


def _type_error(hint: object, value: object) -> str | None:
    """Why ``value`` does not match the field type ``hint`` (``None`` if it does)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        reasons = [_type_error(arm, value) for arm in typing.get_args(hint)]
        return None if None in reasons else " or ".join(r for r in reasons if r)
    if hint is type(None):
        return None if value is None else "None"
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        return None if isinstance(value, str) and value in choices else f"one of {', '.join(choices)}"
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "a finite number"
    return None


def check_types(method: object) -> None:
    """Raise :class:`OptionError` for the first field of a method dataclass whose value does not match
    its annotation (``int`` excludes ``bool``; ``float`` takes finite numbers; ``Literal`` its choices)."""
    hints = typing.get_type_hints(type(method))
    for field in fields(method):  # type: ignore[arg-type]
        value = getattr(method, field.name)
        reason = _type_error(hints[field.name], value)
        if reason:
            raise OptionError(field.name, f"{field.name} must be {reason}, got {value!r}")


@dataclass(frozen=True)
class Footprint:
    """What one generation holds beyond the prompt, before anything is dropped."""

    target: int  # positions past the prompt in the target's cache: new tokens, or a longer lookahead
    draft: int | None  # positions past the prompt in the draft's cache; None: the draft does not run
    lookahead: int = 0  # tokens the draft writes ahead
    rows: int = 0  # query-key weights per query head a target layer's scorer holds at once
    draft_rows: int = 0  # the same for the draft (SpecPC)


@dataclass(frozen=True)
class Method:
    """Base of all methods. ``name`` is the identifier used by the CLI and in results."""

    name: ClassVar[str] = "method"
    widths: ClassVar[tuple[str, ...]] = ()  # options counted in tokens, at most the model's context

    def __post_init__(self) -> None:
        check_types(self)

    @property
    def needs_draft(self) -> bool:
        """Whether the method runs the draft model."""
        return False

    def compresses(self, prompt_length: int) -> bool:
        """Whether this method would drop anything from a prompt of ``prompt_length`` tokens."""
        return False

    def check_widths(self, context: int | None) -> None:
        """Raise :class:`OptionError` for an option counted in tokens (a pool's kernel, a neighbourhood)
        beyond the model's ``context``. Wider than the prompt is not an error: the work does not
        grow with these options, and a pool or neighbourhood wider than the prompt spans all of it."""
        for name in self.widths if context is not None else ():
            value = getattr(self, name)
            if value > context:
                raise OptionError(
                    name, f"{name} ({value}) must be at most the model's context ({context} tokens)"
                )

    def footprint(self, prompt_length: int, max_new_tokens: int) -> Footprint:
        """The most each model holds beyond the prompt while this method answers with up to
        ``max_new_tokens`` tokens (for context and memory checks before any work)."""
        if self.needs_draft and self.compresses(prompt_length):
            return Footprint(max_new_tokens, 0)
        return Footprint(max_new_tokens, None)

    def kept_length(self, prompt_length: int) -> int:
        """Positions per KV head a full-attention layer of the target holds after compression, on
        average over layers and heads (before any token is generated)."""
        return prompt_length

    def prompt_stage(self) -> PromptMethod | None:
        """The stage that drops prompt tokens before the target reads them (``None``: it reads all)."""
        return None

    def kv_stage(self) -> KVMethod | None:
        """The stage that drops KV pairs from the target's cache after its pre-fill (``None``: none)."""
        return None

    @property
    def swaps_attention(self) -> bool:
        """Whether a generation switches the model's attention implementation for a while (see
        :class:`draftwise.attention.AttentionOverride`): such a generation must not share the model
        with another running at the same time."""
        return False


# Where ``sparse_prefill="auto"`` pre-fills sparsely: per device type, the prompt length (with the
# lookahead) from which the fused kernel was measured faster than dense attention with the paper's
# vertical = slash = 2048, with RULER accuracy checked there (docs/results/prefill-flex.md,
# docs/results/ruler-long.md). A device type not listed (CUDA: unmeasured) stays dense.
SPARSE_AUTO_FROM: dict[str, int] = {"cpu": 8192}


@dataclass(frozen=True)
class SparsePrefilling:
    """The options of a sparse (vertical-slash) pre-fill, for a method whose model reads the prompt
    through one (SpecKV's target, SpecPC's draft): every query sees only ``vertical`` keys (per layer
    and KV head, those the last queries of the pass attend to most) and a band of the last ``slash``
    keys (:mod:`draftwise.sparse`).

    ``sparse_prefill``: ``True`` whenever ``vertical + slash`` keys are fewer than the pass reads;
    ``"auto"`` only where it was measured to win (:data:`SPARSE_AUTO_FROM`: on CPUs from 8,192
    tokens), the fused kernel is available, and the method drops something (a budget covering the
    prompt keeps the exact answer); ``False`` never. ``sparse_kernel``: ``"flex"`` runs it as one
    fused FlexAttention kernel (:mod:`draftwise.flex_sparse`, compiled by ``torch.compile``),
    ``"reference"`` as plain PyTorch; the two agree to float rounding. ``"auto"``: ``"flex"`` where
    it can be compiled (a C++ compiler for CPUs, Triton for CUDA). Put it first among the bases of a
    :class:`Budgeted` method, so that its :meth:`sparse_for` is the one the method uses.
    """

    sparse_prefill: bool | Literal["auto"] = False
    vertical: int = 2048
    slash: int = 2048
    sparse_kernel: SparseKernel = "auto"

    def check_sparse(self) -> None:
        check_positive("vertical", self.vertical)
        check_positive("slash", self.slash)

    @property
    def swaps_attention(self) -> bool:
        return bool(self.sparse_prefill)

    def sparse_for(self, prompt_length: int, lookahead: int = 0, device: torch.device | str = "cpu") -> bool:
        """Whether a pass over ``prompt_length`` tokens and ``lookahead`` more on ``device`` runs sparse
        (never when ``vertical + slash`` keys cover it: that would be dense attention)."""
        length = prompt_length + lookahead
        if not self.sparse_prefill or self.vertical + self.slash >= length:
            return False
        if self.sparse_prefill is True:
            return True
        kind = torch.device(device).type
        start = SPARSE_AUTO_FROM.get(kind)
        fused = self.sparse_kernel != "reference" and fused_available(kind)
        return start is not None and length >= start and fused and self.compresses(prompt_length)


@dataclass(frozen=True)
class Budgeted(Method):
    """A method that keeps ``budget`` items (KV pairs or prompt tokens) and always keeps the last ``window``.

    A budget at least the prompt length is not an error: it means no compression.
    """

    budget: int = 256
    window: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        check_budget_and_window(self, "budget", "window")

    def compresses(self, prompt_length: int) -> bool:
        return self.budget < prompt_length

    def kept_length(self, prompt_length: int) -> int:
        return min(prompt_length, self.budget)


@dataclass(frozen=True)
class KVMethod(Budgeted):
    """A method that drops KV pairs: per layer and KV head it keeps the ``budget - window`` best-scored
    prefix keys (the keys before the window) and the ``window`` most recent ones.

    Subclasses implement :meth:`score`. If ``uses_attention``, it receives the attention rows of the
    observation queries (the window's, plus a draft lookahead's for SpecKV); otherwise only the keys.
    Attention scorers with a ``caote`` option say so in :attr:`uses_caote`: CAOTE's correction then
    replaces each attention weight before scoring (:meth:`observation_rows`).
    """

    uses_attention: ClassVar[bool] = False

    def kv_stage(self) -> KVMethod:
        return self

    @property
    def uses_caote(self) -> bool:
        """Whether CAOTE's correction replaces each attention weight before scoring."""
        return False

    def sparse_for(self, prompt_length: int, lookahead: int = 0, device: torch.device | str = "cpu") -> bool:
        """Whether the target pre-fills the prompt and lookahead sparsely (SpecKV's vertical-slash
        pre-fill, :class:`SparsePrefilling`; no other KV method)."""
        return False

    def lookahead_length(self, max_new_tokens: int) -> int:
        """How many draft tokens feed the scorer as extra queries (none unless overridden)."""
        return 0

    @property
    def accepts_lookahead(self) -> bool:
        """Whether the lookahead tokens the target verifies become the answer's first tokens
        (:mod:`draftwise.acceptance`)."""
        return False

    def observed_queries(self, prompt_length: int) -> int:
        """How many of the prompt's last queries the scorer reads (0 if it reads keys only)."""
        return self.window if self.uses_attention else 0

    def rows_at_once(self, prompt_length: int, lookahead: int) -> int:
        """How many query rows the scorer holds at once in one layer (the observed ones and the
        lookahead's; 0 if it reads keys only)."""
        return self.observed_queries(prompt_length) + lookahead if self.uses_attention else 0

    def footprint(self, prompt_length: int, max_new_tokens: int) -> Footprint:
        """The target also pre-fills the lookahead (for its queries) before dropping it."""
        if not self.compresses(prompt_length):
            return Footprint(max_new_tokens, None)
        steps = self.lookahead_length(max_new_tokens)
        rows = self.rows_at_once(prompt_length, steps) * (prompt_length + steps)
        return Footprint(max(max_new_tokens, steps), steps if steps else None, steps, rows)

    def layer_budget(self, index: int, layers: int) -> int:
        """KV pairs per head kept in the ``index``-th of ``layers`` prunable layers (same for all here)."""
        return self.budget

    def select(self, scores: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``count`` best positions per head, ascending: ``(indices [B, G, count], None)``.

        A method giving heads unequal counts returns padded indices and a ``valid`` mask instead.
        """
        return top_indices(scores, count), None

    def score(self, rows: torch.Tensor | None, keys: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, G, k]`` of the prefix keys ``[B, G, k, d]`` (higher is kept); ``rows`` are
        attention probabilities ``[B, G, H/G, q, k]`` of the observation queries over those keys."""
        raise NotImplementedError

    def layer_scores(
        self,
        module: nn.Module,
        queries: torch.Tensor | None,
        keys: torch.Tensor,
        values: torch.Tensor,
        query_positions: torch.Tensor,
        prefix: int,
    ) -> torch.Tensor:
        """Scores ``[B, G, prefix]`` of one layer's prefix keys, from its observed ``queries``
        ``[B, H, q, d]`` at ``query_positions`` and its cached ``keys`` and ``values`` ``[B, G, k, d]``."""
        rows = None
        if self.uses_attention:
            rows = self.observation_rows(module, queries, keys, values, query_positions)[..., :prefix]
        return self.score(rows, keys[:, :, :prefix])

    def observation_rows(
        self,
        module: nn.Module,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        query_positions: torch.Tensor,
    ) -> torch.Tensor:
        """Attention rows ``[B, G, H/G, q, k]`` of ``queries`` over all cached keys, CAOTE-corrected
        when the method :attr:`uses_caote`."""
        rows = module_attention_rows(module, queries, keys, query_positions)
        return caote_correction(rows, values) if self.uses_caote else rows


@dataclass
class KeptTokens:
    """The positions a prompt method kept, and SpecPC's lookahead (reusable as SpecKV's lookahead)."""

    positions: torch.Tensor  # [C] ascending positions into the original prompt
    lookahead_ids: torch.Tensor | None  # [1, m], the draft's lookahead (SpecPC only)
    scores: torch.Tensor  # [n] importance of each prompt token


@dataclass(frozen=True)
class PromptMethod(Budgeted):
    """A method that drops prompt tokens: the target reads the ``budget`` tokens it keeps, the last
    ``window`` included, in their original order."""

    def prompt_stage(self) -> PromptMethod:
        return self

    def keep_tokens(self, draft: nn.Module | None, input_ids: torch.Tensor, stop_ids: Iterable[int] = ()):
        """The kept positions of ``input_ids`` ``[1, n]``, as a :class:`KeptTokens`:
        by default the :meth:`choose` of the draft's :meth:`token_scores` (methods that need no draft
        override this)."""
        scores, lookahead_ids = self.token_scores(draft, input_ids, stop_ids)
        return KeptTokens(self.choose(scores), lookahead_ids, scores)

    def token_scores(
        self, draft: nn.Module, input_ids: torch.Tensor, stop_ids: Iterable[int] = ()
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """For draft-scored methods: ``(scores [n], lookahead_ids [1, m] or None)`` of ``input_ids``
        ``[1, n]`` read by ``draft`` (higher is kept). A draft with another tokenizer scores its own
        tokens; the scores then reach the target's tokens through their characters, and
        :meth:`choose` picks among those."""
        raise NotImplementedError(f"{self.name} takes no draft scores")

    def choose(self, scores: torch.Tensor) -> torch.Tensor:
        """The kept positions (ascending) given per-token ``scores`` ``[n]``."""
        return select_tokens(scores, self.budget, self.window)
