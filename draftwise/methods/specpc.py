"""SpecPC: drop prompt tokens, scored by the draft's attention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from draftwise.methods.base import (
    Footprint,
    Pool,
    PromptMethod,
    check_non_negative,
    check_positive,
)


@dataclass(frozen=True)
class SpecPC(PromptMethod):
    """Compress the prompt to ``budget`` tokens with the draft's attention; the target reads the result.

    1. The draft reads the prompt and greedily writes ``lookahead`` tokens.
    2. From layer ``first_layer`` on, the attention of the prompt's last ``window`` queries and of every
       lookahead token's query (each token fed once, the last one included) over the prompt keys is
       computed in float32.
    3. Window queries are weighted linearly from 0 (oldest) to 1 (newest) if ``weighted_query``;
       lookahead queries weigh 1. The maximum over heads, queries, layers and lookahead steps gives one
       score per prompt token.
    4. Scores are smoothed with a centred ``pool`` of width ``kernel`` (an even kernel takes one more
       token on the left than on the right). Going down the scores, each chosen token brings its
       ``neighbourhood`` of tokens, nearest first, until ``budget`` tokens, the last ``window``
       included, are chosen; they keep their original order.

    Defaults are the paper's: budget 1024, window 64, kernel 64, neighbourhood 64, first layer 8,
    lookahead 1. Layers are counted in the draft; a draft with fewer layers uses its last layer, and
    sliding-window layers are skipped (with none full from `first_layer` on, all full layers are read).
    """

    name: ClassVar[str] = "specpc"
    widths: ClassVar[tuple[str, ...]] = ("kernel", "neighbourhood")

    @property
    def needs_draft(self) -> bool:
        return True

    budget: int = 1024
    window: int = 64
    lookahead: int = 1
    kernel: int = 64
    pool: Pool = "max"
    neighbourhood: int = 64
    first_layer: int = 8
    weighted_query: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("lookahead", self.lookahead)
        check_positive("kernel", self.kernel)
        check_positive("neighbourhood", self.neighbourhood)
        check_non_negative("first_layer", self.first_layer)

    def footprint(self, prompt_length: int, max_new_tokens: int) -> Footprint:
        """The draft reads the prompt and its lookahead, the last token included."""
        if not self.compresses(prompt_length):
            return Footprint(max_new_tokens, None)
        steps = self.lookahead
        rows = (self.window + steps) * (prompt_length + steps)
        return Footprint(max_new_tokens, steps + 1, steps, draft_rows=rows)

    def token_scores(self, draft, input_ids, stop_ids=()):
        from draftwise.prompt import specpc_scores

        return specpc_scores(draft, input_ids, self, stop_ids)

    def choose(self, scores):
        from draftwise.prompt import select_tokens

        return select_tokens(scores.cpu(), self.budget, self.window, self.neighbourhood)
