"""Speculative decoding with the draft: it proposes a few tokens, the target verifies them in one forward.

After pre-fill the draft would sit idle while the target decodes token by token. Here it proposes
up to ``k`` tokens from its own cache of the prompt (optionally compressed by any KV method, e.g.
StreamingLLM, to bound its memory), the target reads them in one forward over its own (possibly
pruned) cache, and :func:`draftwise.acceptance.accept` keeps the prefix the target agrees with, then
adds one token of the target's own. Lossless: greedy answers are the target's own argmax at every
step (the same tokens as decoding without the draft, up to floating-point reduction order), and
sampling keeps the target's distribution exactly (speculative sampling's rule with the draft's
distribution).

Proposals may also come for free from the prompt itself (``proposer="lookup"``, prompt lookup
decoding): the continuation of the latest earlier occurrence of the answer's last few tokens in the
prompt and answer. Long-context answers often copy from their context, and no model runs to propose.

Adaptive draft length (AdaEDL, Agrawal et al. 2024): drafting stops early when the draft's entropy
``H`` bounds the acceptance probability of its next token below a threshold, ``1 - sqrt(scale * H) <
threshold``; the threshold is fixed here (the paper also adapts it to the acceptance seen).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from draftwise.acceptance import verified_tokens
from draftwise.attention import WRAPPED_IMPLEMENTATIONS
from draftwise.cache import tentative
from draftwise.checks import check_architecture, check_context, check_method, check_same_vocabulary
from draftwise.chunk_attention import ChunkAttention, placeholder_mask
from draftwise.decoding import Answer, Sampler
from draftwise.methods.base import KVMethod


@dataclass(frozen=True)
class SpeculativeConfig:
    """How the draft drafts.

    Attributes:
        k: most tokens the draft proposes per verification.
        entropy_threshold: AdaEDL's early stop: drafting stops before a token whose acceptance bound
            ``1 - sqrt(entropy_scale * H)`` (``H``: the draft's entropy there, in nats) is below it.
            ``None``: always ``k`` tokens (fewer only at the answer's end).
        entropy_scale: AdaEDL's ``gamma``.
        draft_method: a KV method that compresses the draft's cache of the prompt (e.g.
            ``StreamingLLM(budget=1024)``), so a long prompt costs the draft bounded memory and steps;
            ``None`` keeps it whole. Methods that need a draft themselves are refused.
        proposer: ``"draft"`` (the draft model proposes) or ``"lookup"`` (the prompt proposes:
            :class:`PromptLookup`; no draft model runs, and none is needed).
        ngram: with ``"lookup"``, the longest run of last tokens matched (shorter runs are tried next).
    """

    k: int = 4
    entropy_threshold: float | None = None
    entropy_scale: float = 0.2
    draft_method: KVMethod | None = None
    proposer: str = "draft"
    ngram: int = 3

    def __post_init__(self) -> None:
        if not (isinstance(self.k, int) and not isinstance(self.k, bool) and 1 <= self.k <= 64):
            raise ValueError(f"speculative k must be an integer in 1..64, got {self.k!r}")
        threshold = self.entropy_threshold
        if threshold is not None and not (_number(threshold) and 0 <= threshold < 1):
            raise ValueError(f"entropy_threshold must be a number in [0, 1) or None, got {threshold!r}")
        if not (_number(self.entropy_scale) and self.entropy_scale > 0):
            raise ValueError(f"entropy_scale must be a positive number, got {self.entropy_scale!r}")
        if self.proposer not in ("draft", "lookup"):
            raise ValueError(f"proposer must be 'draft' or 'lookup', got {self.proposer!r}")
        if not (isinstance(self.ngram, int) and not isinstance(self.ngram, bool) and 1 <= self.ngram <= 16):
            raise ValueError(f"ngram must be an integer in 1..16, got {self.ngram!r}")
        if self.proposer == "lookup" and (
            self.entropy_threshold is not None or self.draft_method is not None
        ):
            raise ValueError("entropy_threshold and draft_method apply to proposer='draft' only")
        method = self.draft_method
        if method is not None and (not isinstance(method, KVMethod) or method.needs_draft):
            raise ValueError(
                "draft_method must be a KV method that needs no draft (StreamingLLM, SnapKV, ...), "
                f"got {method!r}"
            )

    def keeps_drafting(self, probabilities: torch.Tensor) -> bool:
        """AdaEDL's rule on the draft's distribution ``[V]`` for its next token."""
        if self.entropy_threshold is None:
            return True
        p = probabilities.float()
        entropy = float(-(p * p.clamp(min=1e-12).log()).sum())
        return 1 - math.sqrt(self.entropy_scale * entropy) >= self.entropy_threshold


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class SpeculativeStats:
    """What drafting did: ``drafted`` tokens proposed in ``rounds`` verifications, ``accepted`` of them."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0


class Drafter:
    """The draft's side: its cache of the prompt and of the answer so far, from which it proposes.

    Proposals are read on trial (:func:`~draftwise.cache.tentative`) and taken back after each round;
    the answer's tokens the draft has not read yet (those the target accepted, and its own token) are
    read at the start of the next round, in one forward.
    """

    def __init__(
        self,
        draft: nn.Module,
        cache: DynamicCache,
        prompt_length: int,
        config: SpeculativeConfig,
        sampler: Sampler,
    ) -> None:
        """``cache``: the draft's cache of the ``prompt_length``-token prompt (possibly compressed by
        ``config.draft_method``; :meth:`draftwise.readers.SameTokenizerReader.prompt_cache`)."""
        self.draft, self.config, self.sampler = draft, config, sampler
        self.cache = cache
        self.position = prompt_length  # the true position of the next token the draft reads
        self.read = 0  # answer tokens in its cache
        self._attention = ChunkAttention(draft, self.cache)

    def _forward(self, tokens: list[int]) -> torch.Tensor:
        device = self.draft.device
        out = self.draft(
            input_ids=torch.tensor([tokens], device=device),
            past_key_values=self.cache,
            position_ids=torch.arange(self.position, self.position + len(tokens), device=device)[None],
            attention_mask=placeholder_mask(self.draft),
            use_cache=True,
            logits_to_keep=1,
        )
        self.position += len(tokens)
        return out.logits[0, -1]

    @torch.no_grad()
    def propose(
        self, answer: list[int], most: int, stop_ids: Iterable[int] = ()
    ) -> tuple[list[int], torch.Tensor | None]:
        """Up to ``most`` (``>= 1``) tokens after ``answer`` (every answer token so far), and, when
        sampling, the distributions ``[m, V]`` they were drawn from."""
        stops = set(stop_ids)
        proposed: list[int] = []
        distributions: list[torch.Tensor] = []
        with self._attention:
            logits = self._forward(answer[self.read :])
            self.read = len(answer)
            with tentative(self.cache, 0) as trial:
                while len(proposed) < most:
                    probabilities = None
                    if not self.sampler.greedy or self.config.entropy_threshold is not None:
                        probabilities = self.sampler.probabilities(logits[None])[0]
                        if not self.config.keeps_drafting(probabilities):
                            break
                    if self.sampler.greedy:
                        token = int(logits.argmax())
                    else:
                        token = self.sampler.draw(probabilities)
                        distributions.append(probabilities)
                    proposed.append(token)
                    if len(proposed) == most or token in stops:
                        break
                    logits = self._forward([token])
                    trial.tokens += 1
                self.position -= trial.tokens
        return proposed, (torch.stack(distributions) if distributions else None)


class PromptLookup:
    """Proposals looked up in the text so far (prompt lookup decoding): after the latest earlier
    occurrence of the last ``n`` tokens (``n = ngram, ..., 1``) of prompt + answer, the tokens that
    followed it. Deterministic: a point-mass proposal, so sampling stays exact with the same rule."""

    def __init__(self, prompt_ids: torch.Tensor, config: SpeculativeConfig) -> None:
        self.prompt = prompt_ids[0].tolist()
        self.config = config

    def propose(
        self, answer: list[int], most: int, stop_ids: Iterable[int] = ()
    ) -> tuple[list[int], torch.Tensor | None]:
        """Up to ``most`` (``>= 1``) tokens after ``answer``; no distributions (point masses)."""
        text = self.prompt + answer
        for n in range(min(self.config.ngram, len(text) - 1), 0, -1):
            tail = text[-n:]
            for start in range(len(text) - n - 1, -1, -1):  # the latest earlier occurrence
                if text[start : start + n] == tail:
                    found = text[start + n : start + n + most]
                    stops = set(stop_ids)
                    for i, token in enumerate(found):
                        if token in stops:
                            return found[: i + 1], None
                    return found, None
        return [], None


def proposals(
    proposer: Drafter | PromptLookup, answer: list[int], room: int, stop_ids: Iterable[int] = ()
) -> tuple[list[int], torch.Tensor | None]:
    """Up to ``k`` of ``proposer``'s tokens after ``answer`` (and their distributions, when sampled),
    leaving one of the ``room`` the answer has left for the token each verification adds of the
    target's own; none when no room is left for them."""
    most = min(proposer.config.k, room - 1)
    return proposer.propose(answer, most, stop_ids) if most > 0 else ([], None)


@torch.no_grad()
def speculative_decode(
    target: nn.Module,
    cache: DynamicCache,
    first_logits: torch.Tensor | None,
    start_position: int,
    answer: Answer,
    drafter: Drafter | PromptLookup,
    sampler: Sampler,
    first_token: int | None = None,
    stats: SpeculativeStats | None = None,
) -> None:
    """Decode into ``answer`` (which may hold tokens already, e.g. an accepted lookahead, already in
    ``cache`` and ``drafter`` sees them) until it ends, the target verifying ``drafter``'s proposals.

    Args:
        first_logits: ``[1, V]``, the target's logits for the next token (unused with ``first_token``).
        start_position: the true position of that next token.
    """
    stats = stats if stats is not None else SpeculativeStats()
    token = int(sampler(first_logits)[0]) if first_token is None else first_token
    position = start_position  # of `token`, which the target has not read yet
    if answer.take(token):
        return
    verifying = ChunkAttention(target, cache)  # entered per round: the draft reads between (no nesting)
    while True:
        proposed, distributions = proposals(drafter, answer.tokens, answer.room, answer.stop_ids)
        chunk = [token, *proposed]
        with verifying, tentative(cache, len(proposed)) as trial:
            out = target(
                input_ids=torch.tensor([chunk], device=target.device),
                past_key_values=cache,
                position_ids=torch.arange(position, position + len(chunk), device=target.device)[None],
                attention_mask=placeholder_mask(target),
                use_cache=True,
                logits_to_keep=len(chunk),
            )
            tokens = verified_tokens(out.logits[0], proposed, sampler, distributions)
            taken = len(tokens) - 1
            trial.tokens = len(proposed) - taken
        stats.rounds += 1
        stats.drafted += len(proposed)
        stats.accepted += taken
        position += 1 + taken
        for token in tokens:
            if answer.take(token):
                return


def check_speculative(
    config: SpeculativeConfig,
    target: nn.Module,
    draft: nn.Module | None,
    same_tokenizer: bool,
    prompt_length: int,
    max_new_tokens: int,
) -> None:
    """Raise before any work if ``target`` and ``draft`` (``same_tokenizer``: whether it reads the
    target's tokens) cannot decode speculatively with ``config`` a ``prompt_length``-token prompt."""
    if not isinstance(config, SpeculativeConfig):
        raise TypeError(f"speculative must be a draftwise.SpeculativeConfig, got {config!r}")
    models = [("target", target)]
    if config.proposer == "draft":
        if draft is None:
            raise ValueError(
                "speculative decoding needs a draft model; pass draft=... (or proposer='lookup')"
            )
        models.append(("draft", draft))
    for role, model in models:
        implementation = model.config._attn_implementation
        if implementation not in WRAPPED_IMPLEMENTATIONS:
            raise ValueError(
                f"speculative decoding needs 'eager' or 'sdpa' attention in the {role}, "
                f"not {implementation!r}"
            )
    if config.proposer == "lookup":
        return
    check_architecture(draft, "draft")
    if not same_tokenizer:
        raise ValueError(
            "speculative decoding needs a draft with the target's tokenizer (its proposals are verified "
            "token by token); this draft has its own: use it for SpecKV/SpecPC without speculative"
        )
    check_same_vocabulary(target, draft)
    check_context(draft, prompt_length, max_new_tokens + config.k, "draft")
    if config.draft_method is not None:
        check_method(config.draft_method, draft, prompt_length, max_new_tokens + config.k)
