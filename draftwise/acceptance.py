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


def accept(
    logits: torch.Tensor,
    proposed: torch.Tensor | list[int],
    sampler: Sampler | None = None,
    proposal_probabilities: torch.Tensor | None = None,
) -> Verdict:
    """How much of ``proposed`` ``[m]`` the target accepts, from its logits ``[m + 1, V]``: row ``i`` is
    its next-token logits before ``proposed[i]`` (row 0: after the prompt; row ``m``: after the whole
    proposal).

    ``proposal_probabilities`` ``[m, V]``: the distributions the proposed tokens were drawn from (a
    draft that samples); ``None``: each was a point mass (a greedy draft). Sampling then accepts
    ``d_i`` with probability ``min(1, p_i(d_i) / q_i(d_i))`` and, at the first rejection, draws from
    ``max(0, p_i - q_i)`` renormalized: every token keeps the target's distribution."""
    sampler = sampler or Sampler()
    proposed = proposed.tolist() if isinstance(proposed, torch.Tensor) else list(proposed)
    if sampler.greedy:
        choices = logits[: len(proposed)].argmax(dim=-1).tolist()
        accepted = 0
        while accepted < len(proposed) and choices[accepted] == proposed[accepted]:
            accepted += 1
        return Verdict(proposed[:accepted])
    probabilities = sampler.probabilities(logits[: len(proposed)])
    for i, token in enumerate(proposed):
        p = probabilities[i]
        q = None if proposal_probabilities is None else proposal_probabilities[i].to(p)
        chance = p[token] if q is None else p[token] / q[token]
        if sampler.uniform(p.device) < chance:
            continue
        if q is None:
            residual = p.clone()
            residual[token] = 0
        else:
            residual = (p - q).clamp(min=0)
        if residual.sum() <= 0:  # p and q agree up to rounding: an acceptance
            continue
        return Verdict(proposed[:i], sampler.draw(residual / residual.sum()))
    return Verdict(proposed)


def verified_tokens(
    logits: torch.Tensor,
    proposed: list[int],
    sampler: Sampler,
    proposal_probabilities: torch.Tensor | None = None,
) -> list[int]:
    """The tokens one verification of ``proposed`` yields (:func:`accept`, same arguments): the accepted
    prefix, then one token of the target's own: the rejection's replacement, or drawn from its logits
    after the accepted tokens."""
    verdict = accept(logits, proposed, sampler, proposal_probabilities)
    following = verdict.next_token
    if following is None:
        taken = len(verdict.accepted)
        following = int(sampler(logits[taken : taken + 1])[0])
    return [*verdict.accepted, following]
