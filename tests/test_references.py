"""Every method keeps exactly what an independent reference (``tests/references.py``: transformers' own
eager attention, plain loops, written from METHODS.md) says it must, on tiny float32 models.

The library runs as users run it (``generate``); spies record what it kept: the cache positions pruning
keeps per layer and KV head (:func:`conftest.kept_positions`), the tokens the target read
(:func:`conftest.target_inputs`). A reference whose choice hinges on a float32 near-tie would be
ill-posed: each test checks its seed gives a clear choice first.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import ARCHITECTURES, random_ids, tiny_model
from references import (
    adakv_choice,
    attention_probabilities,
    caote,
    choose_tokens,
    eager_pass,
    full_layers,
    greedy,
    group_rows,
    pool,
    pyramid_counts,
    ranked,
    snapkv_layer_scores,
    specpc_token_scores,
    specpc_well_posed,
    top,
    well_posed,
)

from draftwise import (
    H2O,
    TOVA,
    AdaKV,
    KeyDiff,
    KNorm,
    PyramidKV,
    SnapKV,
    SpecKV,
    SpecKVPC,
    SpecPC,
    StreamingLLM,
    generate,
)

N = 72
STOP = {1}  # the tiny tokenizer's and models' end of sequence


def kv_reference(target_eager, ids: list[int], lookahead: list[int], method) -> dict[int, list[list[int]]]:
    """What a SnapKV-family ``method`` keeps per full-attention layer and KV head, from the target's
    eager attention over prompt and lookahead: the chosen prefix positions, then the window."""
    n, window = len(ids), method.window
    seen = eager_pass(target_eager, ids + lookahead)
    groups = target_eager.config.num_key_value_heads
    layers = full_layers(target_eager)
    spare = method.budget - window
    counts = pyramid_counts(spare, len(layers), method.beta) if isinstance(method, PyramidKV) else None
    out = {}
    for index, layer in enumerate(layers):
        scores = snapkv_layer_scores(
            seen.attentions[layer],
            seen.values[layer],
            groups,
            n,
            window,
            method.kernel,
            method.pool,
            method.reduce,
            method.caote,
        )
        count = counts[index] if counts else spare
        if isinstance(method, AdaKV):
            chosen = adakv_choice(scores, count, method.floor)
            flat = [s for head in scores for s in head]
            assert well_posed(flat, groups * count), f"ill-posed seed: layer {layer}"
        else:
            chosen = [top(head, count) for head in scores]
            assert all(well_posed(head, count) for head in scores), f"ill-posed seed: layer {layer}"
        out[layer] = [c + list(range(n - window, n)) for c in chosen]
    return out


def run_kv(arch: str, attn: str, method, kept_positions, tokenizer, layers: int = 3, seed: int = 6):
    """``generate`` with ``method`` on a random prompt; returns (what the library kept, the reference's
    choice, the draft's lookahead, the prompt)."""
    target = tiny_model(arch, attn=attn, layers=layers)
    draft = tiny_model(arch, seed=1, attn=attn, layers=2)
    ids = random_ids(N, seed=seed)
    out = generate(target, draft, tokenizer, ids, method=method, max_new_tokens=2)
    steps = method.lookahead_length(2)
    guess = greedy(draft, ids, steps, STOP) if steps else []
    assert out.stats.lookahead_tokens == len(guess)
    reference = kv_reference(tiny_model(arch, layers=layers), ids, guess, method)
    return dict(kept_positions), reference, guess, ids


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_speckv_keeps_what_the_window_and_lookahead_attend_to(arch, attn, kept_positions, tokenizer):
    """SpecKV: per layer and KV head, the top ``budget - window`` prefix keys by the max-reduced,
    max-pooled attention of the window's and the draft lookahead's queries, plus the window."""
    method = SpecKV(budget=24, window=8, lookahead=6)
    kept, reference, guess, ids = run_kv(arch, attn, method, kept_positions, tokenizer)
    assert len(guess) >= 2
    assert kept == reference
    # The lookahead matters here: without its queries (SnapKV) the reference keeps other keys.
    snap = kv_reference(tiny_model(arch), ids, [], SnapKV(budget=24, window=8))
    assert snap != reference


@pytest.mark.parametrize(
    "arch, method",
    [
        ("llama", SnapKV(budget=24, window=8)),
        ("gemma3_text", SnapKV(budget=24, window=8)),
        ("qwen3", SnapKV(budget=24, window=8, pool="avg", reduce="mean", kernel=5)),
        ("qwen2", SnapKV(budget=20, window=4, caote=True, kernel=3)),
        ("mistral", SpecKV(budget=24, window=8, lookahead=4, caote=True, pool="avg", kernel=5)),
    ],
    ids=["snapkv-llama", "snapkv-gemma3", "snapkv-mean-avg", "snapkv-caote", "speckv-caote"],
)
def test_snapkv_options_keep_the_reference_keys(arch, method, kept_positions, tokenizer):
    kept, reference, *_ = run_kv(arch, "sdpa", method, kept_positions, tokenizer)
    assert kept == reference


@pytest.mark.parametrize("arch", ["qwen2", "gemma3_text"])
def test_lookahead_pyramidkv_keeps_its_layer_budgets_of_the_reference_keys(arch, kept_positions, tokenizer):
    """PyramidKV with a lookahead: SpecKV's scores, layer ``i`` keeping its pyramid count (falling
    linearly with depth, the average the budget) of the best prefix keys."""
    method = PyramidKV(budget=24, window=8, lookahead=4, beta=4)
    kept, reference, *_ = run_kv(arch, "sdpa", method, kept_positions, tokenizer, layers=5)
    lengths = [len(heads[0]) for heads in reference.values()]
    assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[-1]
    assert sum(lengths) == 24 * len(lengths)
    assert kept == reference


@pytest.mark.parametrize("floor", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_ada_speckv_allocates_across_heads_as_the_reference(arch, floor, kept_positions, tokenizer):
    """AdaKV with a lookahead (Ada-SpecKV): each head keeps its top ``floor`` share, the rest of the
    layer's ``G * (budget - window)`` places go to the best remaining scores of any head."""
    method = AdaKV(budget=24, window=8, lookahead=4, floor=floor)
    kept, reference, *_ = run_kv(arch, "sdpa", method, kept_positions, tokenizer)
    # Heads that keep fewer pairs are padded with repeats of a kept position: compare the kept sets.
    assert {layer: [sorted(set(h)) for h in heads] for layer, heads in kept.items()} == reference
    if floor < 1:
        assert any(len(heads[0]) != len(heads[1]) for heads in reference.values()), (
            "heads got unequal budgets"
        )


def test_pyramid_counts_reference_agrees_with_the_layer_budgets():
    """The layer budgets over many shapes (exact rational arithmetic in the reference)."""
    for spare in (1, 7, 16, 50, 100, 224, 992, 2016):
        for layers in (1, 2, 3, 5, 7, 28, 36):
            for beta in (1, 2, 3, 7, 20):
                method = PyramidKV(budget=8 + spare, window=8, beta=beta)
                got = [method.layer_budget(i, layers) - 8 for i in range(layers)]
                assert got == pyramid_counts(spare, layers, beta), (spare, layers, beta)


# ---- attention accumulated over the prompt, and key-only scores ----


@pytest.mark.parametrize("use_caote", [False, True])
@pytest.mark.parametrize("arch", ["qwen2", "gemma3_text"])
def test_h2o_and_tova_keep_the_reference_keys(arch, use_caote, kept_positions, tokenizer):
    """H2O: attention summed over every prompt query and the group's heads; TOVA: the last query's,
    averaged over the group's heads; CAOTE's correction first when on. No pooling."""
    n, window, budget = 60, 4, 20
    ids = random_ids(n, seed=11)
    target = tiny_model(arch, attn="sdpa")
    seen = eager_pass(tiny_model(arch), ids)
    groups = target.config.num_key_value_heads
    for method in (H2O(budget=budget, window=window, caote=use_caote, block=16),
                   TOVA(budget=budget, window=window, caote=use_caote)):  # fmt: skip
        kept_positions.clear()
        scored = []  # the scores [B, G, prefix] the method gave each pruned layer, in order
        real = type(method).layer_scores

        def spy(self, *args, real=real, scored=scored):
            scored.append(real(self, *args))
            return scored[-1]

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(type(method), "layer_scores", spy)
            generate(target, None, tokenizer, ids, method=method, max_new_tokens=1)
        for index, layer in enumerate(full_layers(target)):
            expected = []
            for g, rows in enumerate(group_rows(seen.attentions[layer], groups)):
                if isinstance(method, TOVA):
                    rows = rows[:, n - 1 :]
                if use_caote:
                    rows = caote(rows, seen.values[layer][g])
                total = (
                    rows.double().sum(dim=(0, 1)) if isinstance(method, H2O) else rows.double().mean((0, 1))
                )
                scores = total[: n - window].tolist()
                assert well_posed(scores, budget - window)
                # The scores themselves, not only their top-k (CAOTE's a / (1 - a) is float noise where
                # a query's whole attention is on one key, a = 1: compared as a choice only).
                if not use_caote:
                    got = scored[index][0, g].double()
                    torch.testing.assert_close(got, total[: n - window], rtol=1e-4, atol=1e-6)
                expected.append(top(scores, budget - window) + list(range(n - window, n)))
            assert kept_positions[layer] == expected, (method, layer)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_key_only_baselines_keep_the_reference_keys(arch, kept_positions, tokenizer):
    """StreamingLLM: the first ``sinks`` and the most recent; KNorm: the smallest L2 norms; KeyDiff:
    the lowest cosine similarity to the head's mean prefix key. (Not on the tiny Qwen 3 and Gemma 3:
    their key norms, RMS-normalised with unit weights, are all equal.)"""
    n, window, budget = 60, 4, 20
    ids = random_ids(n, seed=12)
    target = tiny_model(arch, attn="sdpa")
    seen = eager_pass(tiny_model(arch), ids)
    prefix, count = n - window, budget - window
    for method in (StreamingLLM(budget=budget, window=window, sinks=3), KNorm(budget=budget, window=window),
                   KeyDiff(budget=budget, window=window)):  # fmt: skip
        kept_positions.clear()
        generate(target, None, tokenizer, ids, method=method, max_new_tokens=1)
        for layer in full_layers(target):
            expected = []
            for keys in seen.keys[layer][:, :prefix]:  # per KV head, [prefix, d]
                if isinstance(method, StreamingLLM):
                    chosen = [0, 1, 2] + list(range(prefix - (count - 3), prefix))
                elif isinstance(method, KNorm):
                    assert well_posed([-float(k.norm()) for k in keys], count)
                    chosen = top([-float(k.norm()) for k in keys], count)
                else:
                    mean = keys.mean(0)
                    similarity = [float(k @ mean / (k.norm() * mean.norm())) for k in keys]
                    assert well_posed([-s for s in similarity], count)
                    chosen = top([-s for s in similarity], count)
                expected.append(chosen + list(range(prefix, n)))
            assert kept_positions[layer] == expected, (method, layer)


# ---- SpecPC: the draft's attention chooses the prompt tokens ----


def specpc_reference(draft_eager, ids: list[int], method: SpecPC) -> tuple[list[int], list[int]]:
    """(kept positions, lookahead) of SpecPC on ``ids`` with this draft."""
    guess = greedy(draft_eager, ids, method.lookahead, STOP)
    seen = eager_pass(draft_eager, ids + guess)
    scores = specpc_token_scores(
        seen.attentions,
        len(ids),
        method.window,
        len(guess),
        method.first_layer,
        draft_eager.config.num_hidden_layers,
        full_layers(draft_eager),
        method.weighted_query,
        method.kernel,
        method.pool,
    )
    assert specpc_well_posed(scores, method.window), "ill-posed seed"
    return choose_tokens(scores, method.budget, method.window, method.neighbourhood), guess


SPECPC = SpecPC(budget=32, window=8, kernel=4, neighbourhood=4, first_layer=1, lookahead=3)


@pytest.mark.parametrize(
    "arch, method",
    [(arch, SPECPC) for arch in ARCHITECTURES]
    + [
        ("llama", SpecPC(budget=30, window=6, kernel=5, pool="avg", neighbourhood=3, first_layer=8)),
        # From layer 0, of which only the full-attention one (layer 1) is read.
        ("gemma3_text", SpecPC(budget=32, window=8, kernel=4, neighbourhood=4, first_layer=0, lookahead=3)),
        (
            "qwen2",
            SpecPC(budget=30, window=8, kernel=1, neighbourhood=1, first_layer=0, weighted_query=False),
        ),
    ],
)
def test_specpc_target_reads_the_reference_tokens(arch, method, tokenizer, target_inputs):
    """SpecPC: window queries weighted 0..1 and lookahead queries, max over heads, queries and layers
    (from ``first_layer``), pooled; each token of the ranking brings its neighbourhood, nearest first."""
    target = target_inputs.watch(tiny_model(arch, attn="sdpa"))
    draft = tiny_model(arch, seed=1, attn="sdpa", layers=2)
    ids = random_ids(N, seed=7)
    out = generate(target, draft, tokenizer, ids, method=method, max_new_tokens=1)
    positions, guess = specpc_reference(tiny_model(arch, seed=1, layers=2), ids, method)
    assert len(positions) == method.budget and out.stats.lookahead_tokens == len(guess)
    assert target_inputs[0] == [ids[p] for p in positions]


def test_speckvpc_cascade_matches_the_references(tokenizer, kept_positions, target_inputs):
    """SpecKV-PC: SpecPC's tokens, then SpecKV on them with SpecPC's own lookahead as its queries."""
    arch = "qwen2"
    method = SpecKVPC(kv_budget=24, prompt_budget=48, lookahead=4, kv_window=8, prompt_window=8)
    target = target_inputs.watch(tiny_model(arch, attn="sdpa"))
    draft = tiny_model(arch, seed=1, attn="sdpa", layers=2)
    ids = random_ids(N, seed=8)
    out = generate(target, draft, tokenizer, ids, method=method, max_new_tokens=1)
    positions, guess = specpc_reference(tiny_model(arch, seed=1, layers=2), ids, method.prompt_stage())
    short = [ids[p] for p in positions]
    assert target_inputs[0] == short and target_inputs[1] == guess, "prompt, then the same lookahead"
    assert out.stats.prompt_tokens_kept == 48 and out.stats.lookahead_tokens == len(guess) == 4
    assert kept_positions == kv_reference(tiny_model(arch), short, guess, method.kv_stage())


# ---- the sparse pre-fill's verticals and band ----


def dense_masked(query, key, value, visible, scaling) -> torch.Tensor:
    """Attention ``[T, H, d]`` of queries ``[H, T, d]`` with ``visible`` ``[G, T, K]`` (float64)."""
    heads, groups = query.shape[0], key.shape[0]
    size = heads // groups
    out = torch.zeros(query.shape[1], heads, value.shape[-1], dtype=torch.float64)
    for h in range(heads):
        logits = query[h].double() @ key[h // size].double().T * scaling
        logits = logits.masked_fill(~visible[h // size], float("-inf"))
        out[:, h] = logits.softmax(-1) @ value[h // size].double()
    return out


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_sparse_prefill_sees_the_reference_verticals_and_band(arch, tokenizer, monkeypatch, kept_positions):
    """Each full-attention layer's verticals are the ``vertical`` keys SpecKV's scorer ranks highest
    from that pass's window and lookahead queries; a query sees those (if not in its future) and the
    last ``slash`` keys; sliding layers see exactly their window. Then pruning keeps SpecKV's choice."""
    import draftwise.sparse

    calls = []
    real = draftwise.sparse.vertical_slash_attention

    def spy(query, key, value, verticals, band, scaling, softcap=None, block=256):
        out = real(query, key, value, verticals, band, scaling, softcap, block)
        calls.append((query[0], key[0], value[0], verticals, band, scaling, out[0]))
        return out

    monkeypatch.setattr(draftwise.sparse, "vertical_slash_attention", spy)
    target = tiny_model(arch, attn="sdpa")
    draft = tiny_model(arch, seed=1, layers=2)
    ids = random_ids(N, seed=9)
    # the plain kernel, spied on; the fused one equals it (tests/test_sparse.py)
    method = SpecKV(
        budget=24,
        window=8,
        lookahead=4,
        sparse_prefill=True,
        vertical=10,
        slash=12,
        sparse_kernel="reference",
    )
    out = generate(target, draft, tokenizer, ids, method=method, max_new_tokens=1)
    steps = out.stats.lookahead_tokens
    assert steps == len(greedy(draft, ids, 4, STOP)) and len(calls) == target.config.num_hidden_layers
    full = full_layers(target)
    length = N + steps
    observed = method.window + steps
    for layer, (query, key, value, verticals, band, scaling, got) in enumerate(calls):
        assert key.shape[1] == length
        positions = torch.arange(length)
        before = positions[None, :] <= positions[:, None]  # [T, K] causal
        if layer not in full:
            assert verticals is None and band == target.config.sliding_window
            visible = before & (positions[:, None] - positions[None, :] < band)
            expected = dense_masked(query, key, value, visible.expand(key.shape[0], -1, -1), scaling)
            torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)
            continue
        rows = attention_probabilities(query[:, -observed:], key, list(range(N - 8, length)), scaling)
        scores, kept = [], []
        for group in group_rows(rows.float(), key.shape[0]):
            per_key = [float(group[:, :, j].max()) for j in range(N - 8)]
            scores.append(pool(per_key, method.kernel, "max"))
        for head in scores:
            assert well_posed(head, method.vertical) and well_posed(head, method.budget - method.window)
        expected_verticals = [top(head, method.vertical) for head in scores]
        assert verticals[0].tolist() == expected_verticals, layer
        visible = before.expand(key.shape[0], -1, -1).clone()
        for g, chosen in enumerate(expected_verticals):
            in_band = positions[:, None] - positions[None, :] < method.slash
            vertical = torch.zeros(length, dtype=torch.bool)
            vertical[chosen] = True
            visible[g] &= in_band | vertical[None, :]
        torch.testing.assert_close(got.double(), dense_masked(query, key, value, visible, scaling), rtol=1e-4,
                                   atol=1e-5)  # fmt: skip
        # pruning after the sparse pass: SpecKV's choice from the same queries and keys
        kept = [top(head, method.budget - method.window) + list(range(N - 8, N)) for head in scores]
        assert kept_positions[layer] == kept, layer


# ---- a draft with another tokenizer: scores reach the target's tokens through characters ----


def rendered(tokenizer, messages: list[dict]) -> tuple[list[int], list[tuple[int, int] | None]]:
    """(ids, per token the span of the message content it covers, or None), by the chat template."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    content = messages[0]["content"]
    start = text.index(content)
    end = start + len(content)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = []
    for a, b in encoded["offset_mapping"]:
        lo, hi = max(a, start), min(b, end)
        spans.append((lo - start, hi - start) if lo < hi else None)
    return encoded["input_ids"], spans


def test_cross_tokenizer_specpc_target_reads_the_reference_tokens(target_inputs):
    """The draft (SmolLM2's tokenizer) scores its own tokens; each content character takes the best
    score of the draft tokens covering it, each target (Qwen) token the best of its characters, and
    template tokens are always kept; SpecPC chooses among the target's tokens."""
    from transformers import AutoTokenizer

    from draftwise.models import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("qwen2.5-coder-0.5b-instruct"))
    draft_tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m-instruct"))
    text = (
        "Héllo wörld, the needle-7391 is hidden in this café text; naïve readers skim it. " * 3
        + "Which number follows the needle?"
    )
    messages = [{"role": "user", "content": text}]
    target = target_inputs.watch(tiny_model("qwen2", attn="sdpa", vocab=len(tokenizer)))
    draft = tiny_model("llama", seed=1, attn="sdpa", layers=2, vocab=len(draft_tokenizer))
    method = SpecPC(budget=60, window=8, kernel=3, neighbourhood=2, first_layer=1, lookahead=2)
    generate(
        target, draft, tokenizer, messages, method=method, max_new_tokens=1, draft_tokenizer=draft_tokenizer
    )

    draft_ids, draft_spans = rendered(draft_tokenizer, messages)
    target_ids, target_spans = rendered(tokenizer, messages)
    eager_draft = tiny_model("llama", seed=1, layers=2, vocab=len(draft_tokenizer))
    guess = greedy(eager_draft, draft_ids, method.lookahead, {draft_tokenizer.eos_token_id, 1})
    seen = eager_pass(eager_draft, draft_ids + guess)
    draft_scores = specpc_token_scores(
        seen.attentions, len(draft_ids), 8, len(guess), 1, 2, full_layers(eager_draft), True, 3
    )
    chars = [float("-inf")] * len(text)
    for score, span in zip(draft_scores, draft_spans, strict=True):
        for c in range(*span) if span else ():
            chars[c] = max(chars[c], score)
    lowest = min(draft_scores)
    chars = [lowest if c == float("-inf") else c for c in chars]
    scores = [max(chars[span[0] : span[1]]) if span else float("inf") for span in target_spans]
    assert specpc_well_posed([s for s in scores if s != float("inf")], 0), "ill-posed text"
    assert len(set(scores)) > 10, "the transferred scores vary"
    positions = choose_tokens(scores, method.budget, method.window, method.neighbourhood)
    assert target_inputs[0] == [target_ids[p] for p in positions]
    # The transfer matters: choosing by position alone (equal scores) keeps other tokens.
    flat = [float("inf") if s == float("inf") else 0.0 for s in scores]
    assert choose_tokens(flat, method.budget, method.window, method.neighbourhood) != positions


def test_reference_helpers_by_hand():
    """The references' own building blocks on hand-made numbers."""
    assert pool([1.0, 3.0, 2.0, 0.0, 5.0], 3, "max") == [3.0, 3.0, 3.0, 5.0, 5.0]
    assert pool([2.0, 4.0, 6.0], 2, "avg") == [2.0, 3.0, 5.0]  # even: one more on the left
    assert ranked([0.5, 0.9, 0.5, 0.9]) == [1, 3, 0, 2]
    assert top([0.5, 0.9, 0.5, 0.9], 3) == [0, 1, 3]
    assert choose_tokens([0.0] * 10 + [1.0] + [0.0] * 29, 9, 4, 5) == [8, 9, 10, 11, 12, 36, 37, 38, 39]
    assert adakv_choice([[9.0, 8.0, 7.0, 6.0], [0.1, 0.5, 0.2, 0.3]], 2, 0.5) == [[0, 1, 2], [1]]
    assert pyramid_counts(10, 3, 2) == [15, 10, 5]
    rows = torch.tensor([[[0.5, 0.25, 0.25]]])
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    o = torch.tensor([0.5, 0.25])
    expected = [a / (1 - a) * float((values[j] - o).norm()) for j, a in enumerate([0.5, 0.25, 0.25])]
    torch.testing.assert_close(caote(rows, values)[0, 0], torch.tensor(expected))
    keys = torch.randn(2, 5, 4)
    probabilities = attention_probabilities(torch.randn(4, 2, 4), keys, [2, 4], 0.5)
    assert torch.all(probabilities[:, 0, 3:] == 0) and torch.allclose(
        probabilities.sum(-1), torch.ones(4, 2).double()
    )
    assert F.cosine_similarity(keys[0], keys[0].mean(0, keepdim=True)).shape == (5,)
