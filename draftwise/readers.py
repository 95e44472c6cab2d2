"""How the draft reads the prompt: in the target's own tokens, or in its own (another tokenizer).

A reader gives :func:`draftwise.generate` the two things a draft is for, in the target's tokens:
the prompt positions a prompt method keeps, and a lookahead answer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers import DynamicCache

from draftwise.decoding import stop_token_ids
from draftwise.draft import lookahead, lookahead_with_cache
from draftwise.mapping import Rendered, render, transfer_scores, translate
from draftwise.methods.base import KeptTokens, KVMethod, PromptMethod
from draftwise.prefill import prefill
from draftwise.shared_prefill import SharedPrefill
from draftwise.timing import now


class SameTokenizerReader:
    """A draft that reads the target's token ids ``[1, n]`` (the same tokenizer)."""

    def __init__(
        self,
        draft: nn.Module | None,
        input_ids: torch.Tensor,
        stop_ids: Iterable[int],
        reuse: SharedPrefill | None,
    ) -> None:
        self.draft, self.input_ids, self.stop_ids, self.reuse = draft, input_ids, set(stop_ids), reuse
        self._looked_ahead = False
        self._prompt_cache: DynamicCache | None = None  # the draft's, left by its lookahead

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]

    def keep_tokens(self, method: PromptMethod) -> tuple[KeptTokens, float]:
        start = now()
        kept = method.keep_tokens(self.draft, self.input_ids, self.stop_ids)
        return kept, now() - start

    def lookahead(self, steps: int) -> tuple[torch.Tensor | None, float]:
        self._looked_ahead = True
        if self.reuse is not None:
            return self.reuse.lookahead(self.draft, self.input_ids, steps, self.stop_ids)
        start = now()
        ids, self._prompt_cache = lookahead_with_cache(self.draft, self.input_ids, steps, self.stop_ids)
        return ids, now() - start

    def prompt_cache(self, method: KVMethod | None = None) -> tuple[DynamicCache, float]:
        """The draft's cache of the prompt (compressed by ``method``) for speculative decoding, and the
        seconds it costs as if alone: none when this generation's lookahead left it."""
        if method is None and self._looked_ahead:
            cache, self._prompt_cache = self._prompt_cache, None
            if cache is None and self.reuse is not None:
                cache = self.reuse.lookahead_cache()
            if cache is not None:
                return cache, 0.0
        if method is None and self.reuse is not None:
            return self.reuse.draft_prefill(self.draft, self.input_ids)
        start = now()
        cache = prefill(self.draft, self.input_ids, method).cache
        return cache, now() - start


class OwnTokenizerReader:
    """A draft with its own tokenizer, reading the prompt its own way (see :mod:`draftwise.mapping`)."""

    def __init__(self, draft: nn.Module, draft_tokenizer, tokenizer, prompt) -> None:
        self.draft, self.draft_tokenizer, self.tokenizer = draft, draft_tokenizer, tokenizer
        self.target_view: Rendered = render(tokenizer, prompt)
        self.draft_view: Rendered = render(draft_tokenizer, prompt)
        self.stop_ids = stop_token_ids(draft_tokenizer, draft)

    @property
    def length(self) -> int:
        return self.draft_view.ids.shape[1]

    def keep_tokens(self, method: PromptMethod) -> tuple[KeptTokens, float]:
        """The draft's token scores (SpecPC's, Perplexity's) carried to the target's tokens, where the
        method chooses (budget and window count target tokens); a lookahead comes back re-tokenized."""
        start = now()
        try:
            scores, guess = method.token_scores(self.draft, self.draft_view.ids, self.stop_ids)
        except NotImplementedError:
            raise ValueError(f"{method.name} does not support a draft with another tokenizer") from None
        target_scores = transfer_scores(self.draft_view, scores, self.target_view)
        positions = method.choose(target_scores)
        if guess is not None:
            guess = translate(guess, self.draft_tokenizer, self.tokenizer)
        return KeptTokens(positions, guess, target_scores), now() - start

    def lookahead(self, steps: int) -> tuple[torch.Tensor | None, float]:
        """The draft's lookahead as the target's tokens ``[1, m]``, re-tokenized from its text."""
        start = now()
        ids = lookahead(self.draft, self.draft_view.ids, steps, self.stop_ids)
        return translate(ids, self.draft_tokenizer, self.tokenizer), now() - start
