"""Accepting the draft's lookahead where the target agrees: the target verifies it for free.

SpecKV has the target read the draft's lookahead ``d_1 .. d_m`` after the prompt (for its queries), so
the target's own next-token distributions ``p_1`` (after the prompt), ``p_2`` (after ``d_1``), ...,
``p_{m+1}`` come out of that same pass. As in speculative decoding:

- greedy: ``d_i`` is accepted while it is the target's argmax of ``p_i``; the first token after the
  accepted ones is the argmax of the next ``p``, as decoding would choose it;
- sampling: ``d_i`` (the draft's greedy choice, a point mass) is accepted with probability
  ``p_i(d_i)``; at the first rejection the next token is drawn from ``p_i`` without ``d_i``,
  renormalized (speculative sampling's residual ``max(0, p - q)``), so every token has exactly the
  target's distribution.

The accepted tokens are the target's own, computed with its full cache of the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from draftwise.decoding import Sampler


@dataclass
class Verdict:
    """``accepted`` lookahead tokens, then ``next_token``: the token after them when a rejection
    decided it (sampling), else ``None`` (sample it from the target's logits after the accepted)."""

    accepted: list[int]
    next_token: int | None = None


def accept(logits: torch.Tensor, proposed: torch.Tensor, sampler: Sampler | None = None) -> Verdict:
    """How much of ``proposed`` ``[m]`` the target accepts, from its logits ``[m + 1, V]``: row ``i`` is
    its next-token logits before ``proposed[i]`` (row 0: after the prompt; row ``m``: after the whole
    lookahead)."""
    sampler = sampler or Sampler()
    proposed = proposed.tolist()
    if sampler.greedy:
        choices = logits[: len(proposed)].argmax(dim=-1).tolist()
        accepted = 0
        while accepted < len(proposed) and choices[accepted] == proposed[accepted]:
            accepted += 1
        return Verdict(proposed[:accepted])
    probabilities = sampler.probabilities(logits[: len(proposed)])
    for i, token in enumerate(proposed):
        p = probabilities[i]
        if sampler.uniform(p.device) < p[token]:
            continue
        residual = p.clone()
        residual[token] = 0
        if residual.sum() <= 0:  # p[token] rounded to 1: an acceptance
            continue
        return Verdict(proposed[:i], sampler.draw(residual / residual.sum()))
    return Verdict(proposed)
