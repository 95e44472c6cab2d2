"""Token-by-token decoding from a (possibly pruned) cache at true positions."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from draftwise.cache import head_masks
from draftwise.headmask import HeadMaskedAttention

GREEDY_BELOW = 1e-5  # temperatures below this decode greedily, as in vLLM (logits / t would overflow)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Sampler:
    """Greedy when ``temperature`` is 0 (or below ``GREEDY_BELOW``); otherwise temperature and nucleus
    (top-p) sampling, seeded."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (_is_number(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (_is_number(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if self.seed is not None and not (
            isinstance(self.seed, int) and not isinstance(self.seed, bool) and -(2**63) <= self.seed < 2**64
        ):
            raise ValueError(f"seed must be an integer in [-2**63, 2**64), got {self.seed!r}")
        self._generator: torch.Generator | None = None
        self._warpers = LogitsProcessorList()
        if not self.greedy:
            self._warpers.append(TemperatureLogitsWarper(float(self.temperature)))
            if self.top_p < 1:
                self._warpers.append(TopPLogitsWarper(float(self.top_p)))

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Next token ``[B]`` from logits ``[B, V]``."""
        if self.greedy:
            return logits.argmax(dim=-1)
        probs = self.probabilities(logits)
        return torch.multinomial(probs, 1, generator=self._generator_on(logits.device)).squeeze(1)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The distributions ``[B, V]`` this sampler draws from (temperature, then top-p)."""
        return self._warpers(None, logits.float()).softmax(dim=-1)

    def uniform(self, device: torch.device | str = "cpu") -> float:
        """A draw from U[0, 1), from this sampler's seeded generator."""
        return float(torch.rand((), generator=self._generator_on(torch.device(device)), device=device))

    def draw(self, probabilities: torch.Tensor) -> int:
        """A token drawn from ``probabilities`` ``[V]`` with this sampler's seeded generator."""
        generator = self._generator_on(probabilities.device)
        return int(torch.multinomial(probabilities, 1, generator=generator)[0])

    def _generator_on(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            if self.seed is not None:
                self._generator.manual_seed(self.seed)
            else:
                self._generator.seed()
        return self._generator


def ending(
    tokens: list[int],
    max_new_tokens: int,
    stop_ids: frozenset[int],
    on_token: Callable[[int], bool | None] | None,
) -> str | None:
    """Why an answer ends with its latest token ``tokens[-1]`` (streamed to ``on_token`` here): ``"stop"``
    (a stop token, or ``on_token`` returned ``True``: a stop string), ``"length"``, or ``None``. An
    exception ``on_token`` raises propagates."""
    token = tokens[-1]
    if (on_token is not None and on_token(token) is True) or token in stop_ids:
        return "stop"
    return "length" if len(tokens) >= max_new_tokens else None


class Answer:
    """An answer's tokens as they are chosen, and the rule that ends it: the token limit, a stop token,
    or ``on_token`` returning ``True`` (a stop string). An exception ``on_token`` raises propagates."""

    def __init__(
        self,
        max_new_tokens: int,
        stop_ids: Iterable[int] = (),
        on_token: Callable[[int], bool | None] | None = None,
    ) -> None:
        self.max_new_tokens, self.stop_ids, self.on_token = max_new_tokens, frozenset(stop_ids), on_token
        self.tokens: list[int] = []
        self.finish_reason: str | None = None  # "stop" or "length" once ended

    def take(self, token: int) -> bool:
        """Add ``token`` (streamed to ``on_token``); True when the answer has ended with it."""
        self.tokens.append(token)
        self.finish_reason = ending(self.tokens, self.max_new_tokens, self.stop_ids, self.on_token)
        return self.finish_reason is not None

    @property
    def room(self) -> int:
        """Tokens the answer may still take."""
        return self.max_new_tokens - len(self.tokens)


@torch.no_grad()
def decode(
    model: nn.Module,
    cache: DynamicCache,
    first_logits: torch.Tensor,
    start_position: int,
    max_new_tokens: int,
    sampler: Sampler | None = None,
    stop_ids: Iterable[int] = (),
    feed_last: bool = False,
    on_token: Callable[[int], bool | None] | None = None,
    first_token: int | None = None,
) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens (batch of one) from ``cache``.

    Args:
        first_logits: ``[1, V]`` logits of the last prompt position.
        start_position: the true position of the first new token (the uncompressed prompt length),
            whatever the cache's length: RoPE sees ``start_position, start_position + 1, ...``.
        stop_ids: tokens that end generation (kept in the output).
        feed_last: also run the model on the last token, so the cache (and any query recorder) sees
            every generated token.
        on_token: called with each new token id as soon as it is chosen (for streaming). If it
            returns ``True`` generation ends after that token (a stop string was reached); an
            exception it raises stops generation and propagates.
        first_token: the first new token when it is already chosen (a rejected lookahead's
            replacement, :mod:`draftwise.acceptance`); ``first_logits`` are then not sampled.
    A cache whose pruned layers hold padding (heads that kept unequal counts, AdaKV) is decoded with
    :class:`~draftwise.headmask.HeadMaskedAttention`, which never attends to the padding.

    Returns:
        ``[1, T]`` generated token ids, ``T <= max_new_tokens``.
    """
    masks = head_masks(cache)
    with HeadMaskedAttention(model, masks) if masks else nullcontext():
        sampler = sampler or Sampler()
        answer = Answer(max_new_tokens, stop_ids, on_token)
        device = first_logits.device
        token = int(sampler(first_logits)[0]) if first_token is None else first_token
        done = answer.take(token)
        position = start_position
        # A new token sees every cached key, in every layer. Eager attention would otherwise get a mask
        # sized from the first layer's cache, wrong for layers pruned to other lengths (PyramidKV); a
        # broadcast zero mask fits them all. sdpa and flash attention build no mask for one token.
        visible = None
        if model.config._attn_implementation == "eager":
            visible = torch.zeros(1, 1, 1, 1, dtype=model.dtype, device=model.device)
        while not done or feed_last:
            position_ids = torch.tensor([[position]], device=device)
            out = model(
                input_ids=torch.tensor([[token]], device=model.device),
                past_key_values=cache,
                position_ids=position_ids.to(model.device),
                attention_mask=visible,
                use_cache=True,
                logits_to_keep=1,
            )
            position += 1
            if done:
                break
            token = int(sampler(out.logits[:, -1].to(device))[0])
            done = answer.take(token)
        return torch.tensor([answer.tokens], device=device)


def stop_token_ids(tokenizer, model: nn.Module) -> set[int]:
    """End-of-sequence ids from the tokenizer and the model's generation config."""
    ids: set[int] = set()
    for source in (
        getattr(tokenizer, "eos_token_id", None),
        getattr(model.generation_config, "eos_token_id", None),
    ):
        if isinstance(source, int):
            ids.add(source)
        elif source is not None:
            ids.update(int(i) for i in source)
    return ids
