"""A draft made of the target's own first layers, sharing its weights."""

from __future__ import annotations

import pytest
import torch
from helpers import ARCHITECTURES, random_ids, tiny_model

from draftwise import SpecKV, SpecPC, generate, self_draft


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_self_draft_shares_weights_and_computes_the_first_layers(arch, tokenizer):
    target = tiny_model(arch, layers=4)
    draft = self_draft(target, layers=2)
    assert draft.model.layers[1] is target.model.layers[1] and len(draft.model.layers) == 2
    assert draft.lm_head.weight.data_ptr() == target.lm_head.weight.data_ptr()
    ids = torch.tensor([random_ids(30)])
    with torch.no_grad():
        hidden = target(input_ids=ids, output_hidden_states=True).hidden_states[2]
        expected = target.lm_head(target.model.norm(hidden))
        torch.testing.assert_close(draft(input_ids=ids).logits, expected)
    out = generate(
        target, draft, tokenizer, random_ids(60), method=SpecKV(budget=24, window=4), max_new_tokens=4
    )
    assert out.stats.kv_pairs_kept == 24
    out = generate(
        target, draft, tokenizer, random_ids(60), method=SpecPC(budget=30, window=4, first_layer=1)
    )
    assert out.stats.prompt_tokens_kept == 30


def test_self_draft_layer_count_is_checked():
    with pytest.raises(ValueError, match="layers must be in 1..3"):
        self_draft(tiny_model("llama"), layers=4)
