"""Exactness that runs the methods: every method's whole compression path (draft, scoring, selection,
pruning or prompt choice, lookahead, sparse pre-fill) is forced with a budget that keeps everything,
and the answer must be Full's, token for token, on every architecture and attention implementation.

``generate`` skips a method whose budget covers the prompt (``compresses()`` is False): that is Full's
own path, tested in ``test_exactness.py``. Here :func:`helpers.forced` makes ``compresses()`` True.
"""

from __future__ import annotations

import pytest
import torch
from helpers import ARCHITECTURES, forced, keeping_everything, random_ids, tiny_model

from draftwise import Full, KVMethod, PromptMethod, SpecKVPC, generate
from draftwise.cache import prunable_layers
from draftwise.prefill import prefill

N = 80
NEW = 12


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forced_compression_keeping_everything_gives_full_answer(arch, attn, tokenizer, kept_positions):
    target = tiny_model(arch, seed=0, attn=attn)
    draft = tiny_model(arch, seed=1, attn=attn, layers=2)
    ids = random_ids(N)
    full = generate(target, draft, tokenizer, ids, method=Full(), max_new_tokens=NEW)
    assert len(full.token_ids) > 1
    pruned_layers = prunable_layers(prefill(target, torch.tensor([ids])).cache)
    groups = target.config.num_key_value_heads
    for method in keeping_everything(N):
        kept_positions.clear()
        out = generate(target, draft, tokenizer, ids, method=forced(method), max_new_tokens=NEW)
        assert out.token_ids == full.token_ids, (arch, attn, method)
        assert out.stats.kv_bytes == full.stats.kv_bytes
        assert out.stats.prompt_tokens_kept == N
        # The compression path really ran: every full-attention layer was pruned (keeping all of it)...
        if isinstance(method, KVMethod | SpecKVPC):
            assert sorted(kept_positions) == pruned_layers, method
            assert all(kept == [list(range(N))] * groups for kept in kept_positions.values()), method
        else:
            assert not kept_positions
        # ... the draft ran where the method uses one, and a prompt method chose its tokens.
        if method.needs_draft or isinstance(method, PromptMethod):
            assert out.stats.draft_seconds > 0, method
        if getattr(method, "lookahead", 0) != 0:
            assert out.stats.lookahead_tokens >= 1, method
    assert target.config._attn_implementation == attn
