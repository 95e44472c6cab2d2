"""LLMLingua-style prompt compression: keep the tokens the draft finds most surprising."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from draftwise.methods.base import PromptMethod


@torch.no_grad()
def surprisal(model: nn.Module, input_ids: torch.Tensor, block: int = 512) -> torch.Tensor:
    """``-log p(x_i | x_<i)`` ``[n]`` under ``model`` (``+inf`` for the first token), with the LM head
    applied ``block`` positions at a time so the ``[n, vocab]`` logits never exist at once."""
    input_ids = input_ids.to(model.device)
    hidden = model.model(input_ids=input_ids).last_hidden_state[0]  # [n, h]
    head = model.get_output_embeddings()
    out = torch.full((input_ids.shape[1],), float("inf"), device=hidden.device)
    for start in range(0, hidden.shape[0] - 1, block):
        stop = min(start + block, hidden.shape[0] - 1)
        logits = head(hidden[start:stop]).float()
        targets = input_ids[0, start + 1 : stop + 1]
        out[start + 1 : stop + 1] = -logits.log_softmax(-1).gather(1, targets[:, None])[:, 0]
    return out


@dataclass(frozen=True)
class Perplexity(PromptMethod):
    """Token-level LLMLingua-style dropping: the draft scores each prompt token by its surprisal and
    the ``budget - window`` most surprising ones are kept with the window, in order. (LLMLingua adds
    a coarse segment stage and iterative compression; this is its token-level core.)"""

    name: ClassVar[str] = "perplexity"

    @property
    def needs_draft(self) -> bool:
        return True

    budget: int = 1024
    window: int = 64

    def token_scores(self, draft, input_ids, stop_ids=()):
        return surprisal(draft, input_ids).cpu(), None
