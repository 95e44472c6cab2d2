"""Sparse pre-fill: vertical-slash attention against a dense reference, and SpecKV's sparse path."""

from __future__ import annotations

import pytest
import torch
from helpers import ARCHITECTURES, assert_fused_prefill_is_reference, random_ids, tiny_model

import draftwise.flex_sparse
import draftwise.methods.base
import draftwise.prefill
import draftwise.sparse
from draftwise import SpecKV, SpecPC
from draftwise.cache import prunable_layers
from draftwise.decoding import decode
from draftwise.flex_sparse import flex_vertical_slash_attention, fused_available
from draftwise.methods.base import SPARSE_AUTO_FROM, SparsePrefilling
from draftwise.methods.specpc import _strongest
from draftwise.prefill import prefill, prefill_sparse
from draftwise.scoring import top_indices
from draftwise.sparse import SparsePrefill, vertical_slash_attention

needs_compiler = pytest.mark.skipif(
    not fused_available("cpu"), reason="no C++ compiler: torch.compile cannot build the fused kernel"
)


def dense_reference(query, key, value, visible, scaling, softcap=None):
    """Attention with an explicit ``visible`` mask ``[B, G, T, K]`` (per KV head)."""
    group = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(group, dim=1)
    v = value.repeat_interleave(group, dim=1)
    mask = visible.repeat_interleave(group, dim=1)
    logits = query @ k.transpose(-1, -2) * scaling
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    logits = logits.masked_fill(~mask, float("-inf"))
    return (logits.softmax(-1) @ v).transpose(1, 2)


def random_qkv(length=40, keys=40, heads=4, groups=2, dim=8, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, heads, length, dim, generator=g),
        torch.randn(batch, groups, keys, dim, generator=g),
        torch.randn(batch, groups, keys, dim, generator=g),
    )


def vertical_slash_mask(length, n_keys, verticals, band):
    """``[B, G, T, K]``: the query at position ``p`` (the last ``length`` of ``n_keys``) sees the keys
    ``p - band + 1 .. p`` and the ``verticals`` ``[B, G, V]`` at or before ``p``."""
    positions = torch.arange(n_keys - length, n_keys)[:, None]
    distance = positions - torch.arange(n_keys)[None, :]
    in_band = (distance >= 0) & (distance < band)
    batch, groups = verticals.shape[:2]
    visible = in_band[None, None].repeat(batch, groups, 1, 1)
    for b in range(batch):
        for head in range(groups):
            for j in verticals[b, head].tolist():
                visible[b, head, :, j] |= positions[:, 0] >= j
    return visible


@pytest.mark.parametrize("block", [7, 256])
def test_vertical_slash_matches_its_mask(block):
    q, k, v = random_qkv(length=30, keys=40)
    verticals = torch.tensor([[[0, 3, 17, 25, 39], [1, 2, 8, 30, 31]]])
    got = vertical_slash_attention(q, k, v, verticals, 6, 0.3, block=block)
    visible = vertical_slash_mask(30, 40, verticals, 6)
    torch.testing.assert_close(got, dense_reference(q, k, v, visible, 0.3), rtol=1e-5, atol=1e-6)


def test_each_sequence_of_a_batch_has_its_own_verticals():
    q, k, v = random_qkv(length=30, keys=40, batch=2)
    verticals = torch.tensor([[[0, 3, 17], [1, 2, 8]], [[5, 6, 20], [0, 11, 29]]])
    got = vertical_slash_attention(q, k, v, verticals, 4, 0.3, block=8)
    visible = vertical_slash_mask(30, 40, verticals, 4)
    torch.testing.assert_close(got, dense_reference(q, k, v, visible, 0.3), rtol=1e-5, atol=1e-6)


def test_vertical_slash_attention_keeps_the_inputs_dtype():
    q, k, v = random_qkv(length=30, keys=40)
    verticals = torch.tensor([[[0, 3, 17], [1, 2, 8]]])
    got = vertical_slash_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), verticals, 4, 0.3)
    assert got.dtype == torch.bfloat16
    expected = dense_reference(q, k, v, vertical_slash_mask(30, 40, verticals, 4), 0.3)
    torch.testing.assert_close(got.float(), expected, rtol=0.05, atol=0.05)


def test_vertical_slash_with_everything_visible_is_dense_causal_attention():
    q, k, v = random_qkv()
    everything = torch.arange(40).expand(1, 2, -1)
    causal = torch.ones(40, 40, dtype=torch.bool).tril()[None, None].repeat(1, 2, 1, 1)
    expected = dense_reference(q, k, v, causal, 0.35)
    torch.testing.assert_close(vertical_slash_attention(q, k, v, everything, 3, 0.35), expected)
    torch.testing.assert_close(vertical_slash_attention(q, k, v, None, 40, 0.35), expected)


def sparse_pass(method: SpecKV, observed: int, vertical: int, slash: int) -> SparsePrefill:
    """A sparse pass of ``vertical`` verticals chosen by ``method``'s scorer and a band of ``slash``,
    called directly (no model)."""
    settings = SparsePrefilling(vertical=vertical, slash=slash, sparse_kernel=method.sparse_kernel)
    return SparsePrefill(torch.nn.Linear(1, 1), settings, method.score, observed)


class Capped(torch.nn.Module):
    """Stands for an attention module with Gemma 2's logit soft-capping."""

    attn_logit_softcapping = 2.0


@pytest.mark.parametrize("sliding_window", [None, 20])
@pytest.mark.parametrize("scaling", [0.7, None])
def test_the_sparse_pass_uses_the_modules_scaling_and_soft_capping(scaling, sliding_window):
    """With every key before the observed queries a vertical and a band as wide as the observed queries,
    a full layer's sparse attention is dense causal attention under the layer's own scaling (head size
    ** -0.5 when it gives none) and soft-capping; so is a sliding layer's, with a window as long."""
    q, k, v = random_qkv(length=20, keys=20)
    sparse = sparse_pass(SpecKV(budget=8, window=4), observed=4, vertical=16, slash=4)
    got, _ = sparse.attention(Capped(), q, k, v, None, scaling=scaling, sliding_window=sliding_window)
    causal = torch.ones(20, 20, dtype=torch.bool).tril()[None, None].repeat(1, 2, 1, 1)
    expected = dense_reference(q, k, v, causal, 0.7 if scaling else 8**-0.5, softcap=2.0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", ["reference", pytest.param("flex", marks=needs_compiler)])
def test_a_sliding_layer_sees_exactly_its_window(kernel):
    """A sliding layer's sparse attention is its own windowed attention, whichever kernel the full
    layers take: a query at ``p`` sees ``p - window + 1 .. p`` (no verticals), here with a window
    shorter than the prompt and soft-capping."""
    q, k, v = random_qkv(length=40, keys=40)
    settings = SparsePrefilling(vertical=16, slash=4, sparse_kernel=kernel)
    sparse = SparsePrefill(torch.nn.Linear(1, 1), settings, SpecKV(budget=8, window=4).score, 4)
    got, _ = sparse.attention(Capped(), q, k, v, None, scaling=0.5, sliding_window=7)
    window = vertical_slash_mask(40, 40, torch.empty(1, 2, 0, dtype=torch.long), band=7)
    expected = dense_reference(q, k, v, window, 0.5, softcap=2.0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_single_candidate_key_is_a_vertical():
    """Five keys, four observed queries: the one key before them is the vertical every query sees."""
    q, k, v = random_qkv(length=5, keys=5)
    sparse = sparse_pass(SpecKV(budget=8, window=4), observed=4, vertical=1, slash=1)
    got, _ = sparse.attention(torch.nn.Module(), q, k, v, None, scaling=0.5)
    visible = (torch.eye(5, dtype=torch.bool) | (torch.arange(5)[None, :] == 0))[None, None].repeat(
        1, 2, 1, 1
    )
    torch.testing.assert_close(got, dense_reference(q, k, v, visible, 0.5), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("length", "vertical"), [(4, 2), (10, 0)])
def test_without_candidates_or_verticals_a_query_sees_only_its_band(length, vertical):
    """No key before the four observed queries, or no vertical asked for: the band alone."""
    q, k, v = random_qkv(length=length, keys=length)
    sparse = sparse_pass(SpecKV(budget=8, window=4), observed=4, vertical=vertical, slash=2)
    got, _ = sparse.attention(torch.nn.Module(), q, k, v, None, scaling=0.5)
    visible = vertical_slash_mask(length, length, torch.zeros(1, 2, 0, dtype=torch.long), 2)
    torch.testing.assert_close(got, dense_reference(q, k, v, visible, 0.5), rtol=1e-5, atol=1e-6)


def test_the_verticals_are_chosen_before_all_observed_queries():
    """Twelve observed queries (more than the head size, 8) over fourteen keys leave two candidates, keys
    0 and 1, which every query then sees, though keys 2-5 would attract far more attention."""
    q, k, v = random_qkv(length=14, keys=14)
    pull = q[:, :, -12:].mean(dim=2).reshape(1, 2, 2, 8).mean(dim=2)  # [B, G, d], each group's queries
    k[:, :, 0:2] = -4 * pull[:, :, None]
    k[:, :, 2:6] = 4 * pull[:, :, None]
    sparse = sparse_pass(SpecKV(budget=8, window=4, kernel=1), observed=12, vertical=2, slash=2)
    got, _ = sparse.attention(torch.nn.Module(), q, k, v, None, scaling=0.5)
    visible = vertical_slash_mask(14, 14, torch.tensor([[[0, 1], [0, 1]]]), 2)
    torch.testing.assert_close(got, dense_reference(q, k, v, visible, 0.5), rtol=1e-5, atol=1e-6)


class TightlyCapped(torch.nn.Module):
    attn_logit_softcapping = 0.5


def test_the_verticals_are_ranked_by_soft_capped_attention():
    """Key 0 draws all of one observed query's attention and none of the other's; key 1 a fair share of
    both. Uncapped, key 0 has the larger mean attention; capped at 0.5 (both logits near the cap), key 1
    has, and it is the vertical the sparse pass chooses."""
    q = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])[None, None]  # [1, 1, 4, 2]
    k = torch.tensor([[10.0, -10.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])[None, None]
    v = torch.randn(1, 1, 4, 2, generator=torch.Generator().manual_seed(0))
    method = SpecKV(budget=8, window=2, kernel=1, reduce="mean")
    sparse = sparse_pass(method, observed=2, vertical=1, slash=1)
    uncapped = vertical_slash_mask(4, 4, torch.tensor([[[0]]]), 1)
    capped = vertical_slash_mask(4, 4, torch.tensor([[[1]]]), 1)
    free, _ = sparse.attention(torch.nn.Module(), q, k, v, None, scaling=1.0)
    torch.testing.assert_close(free, dense_reference(q, k, v, uncapped, 1.0))
    got, _ = sparse.attention(TightlyCapped(), q, k, v, None, scaling=1.0)
    torch.testing.assert_close(got, dense_reference(q, k, v, capped, 1.0, softcap=0.5))


def test_a_sparse_prefill_without_lookahead_keeps_the_sliding_layers_whole():
    """Gemma 3's first (sliding) layer holds exactly the dense pre-fill's keys, and no longer records
    its past once the pre-fill is done."""
    target = tiny_model("gemma3_text")
    ids = torch.tensor([random_ids(50, seed=5)])
    dense = prefill(target, ids)
    sparse = prefill_sparse(
        target, ids, SpecKV(budget=24, window=8, sparse_prefill=True, vertical=8, slash=8), None
    )
    torch.testing.assert_close(sparse.cache.layers[0].keys, dense.cache.layers[0].keys)
    sliding = [layer for i, layer in enumerate(sparse.cache.layers) if i not in prunable_layers(sparse.cache)]
    assert sliding and not any(layer.record_past for layer in sliding)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sparse_prefill_covering_everything_decodes_like_dense(arch):
    target = tiny_model(arch)
    n = 60
    ids = torch.tensor([random_ids(n, seed=6)])
    guess = torch.tensor([random_ids(5, seed=7)])
    dense = prefill(target, ids, SpecKV(budget=n, window=8), guess)
    # The last 8 + 5 queries score the other 52 keys: 52 verticals and a band of 13 hide nothing.
    covering = SpecKV(budget=n, window=8, sparse_prefill=True, vertical=52, slash=13)
    sparse = prefill_sparse(target, ids, covering, guess)
    torch.testing.assert_close(sparse.logits, dense.logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(
        decode(target, sparse.cache, sparse.logits, n, 8), decode(target, dense.cache, dense.logits, n, 8)
    )
    assert target.config._attn_implementation == "eager", "the attention implementation is restored"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sparse_prefill_keeps_the_budget(arch):
    target = tiny_model(arch, attn="sdpa")
    n, budget = 80, 24
    ids = torch.tensor([random_ids(n, seed=8)])
    method = SpecKV(budget=budget, window=8, sparse_prefill=True, vertical=8, slash=8)
    filled = prefill(target, ids, method, torch.tensor([random_ids(4, seed=9)]))
    for i, layer in enumerate(filled.cache.layers):
        if i in prunable_layers(filled.cache):
            assert layer.keys.shape[2] == budget
        else:
            assert layer.keys.shape[2] == target.config.sliding_window - 1 and layer.cumulative_length == n
    assert target.config._attn_implementation == "sdpa"
    tokens = decode(target, filled.cache, filled.logits, n, 5)
    assert tokens.shape[1] >= 1


def test_sparse_parameters_are_checked():
    with pytest.raises(ValueError, match="vertical"):
        SpecKV(budget=64, sparse_prefill=True, vertical=0)


def test_sparse_prefill_runs_only_when_it_hides_something():
    """The sparse pre-fill applies when ``vertical + slash`` is less than the pre-filled length (prompt
    and lookahead), and only with ``sparse_prefill`` on."""
    method = SpecKV(budget=64, sparse_prefill=True, vertical=60, slash=40)
    assert method.sparse_for(101) and method.sparse_for(99, 2) and not method.sparse_for(100)
    assert not method.sparse_for(50, 10)
    dense = SpecKV(budget=64, sparse_prefill=False, vertical=8, slash=8)
    assert not dense.sparse_for(1000) and not dense.swaps_attention and method.swaps_attention


@pytest.mark.parametrize("cls", [SpecKV, SpecPC])
def test_auto_goes_sparse_only_where_it_was_measured_to_win(cls, monkeypatch):
    """``sparse_prefill="auto"`` (SpecKV's default): sparse on a CPU from SPARSE_AUTO_FROM tokens (prompt
    and lookahead) when the fused kernel can be built and the budget drops something; dense on a device
    with no measured threshold, with the reference kernel, below the threshold, and when the budget
    covers the prompt (the answer then stays exactly Full's)."""
    monkeypatch.setattr(draftwise.methods.base, "fused_available", lambda kind: True)
    start = SPARSE_AUTO_FROM["cpu"]
    method = cls(budget=256, sparse_prefill="auto")
    assert method.sparse_for(start) and method.sparse_for(start - 8, 8) and method.swaps_attention
    assert not method.sparse_for(start - 1) and not method.sparse_for(start - 9, 8)
    assert not method.sparse_for(start * 2, 0, "cuda") and "cuda" not in SPARSE_AUTO_FROM
    assert not cls(budget=start * 2, sparse_prefill="auto").sparse_for(start * 2)
    assert cls(budget=start * 2, sparse_prefill=True).sparse_for(start * 2)
    assert not cls(budget=256, sparse_prefill="auto", sparse_kernel="reference").sparse_for(start * 2)
    assert not cls(budget=256, sparse_prefill="auto", vertical=start, slash=start).sparse_for(start * 2)
    monkeypatch.setattr(draftwise.methods.base, "fused_available", lambda kind: False)
    assert not method.sparse_for(start * 2) and cls(sparse_prefill=True).sparse_for(start * 2)


def test_speckv_defaults_to_auto_and_specpc_to_dense():
    assert SpecKV().sparse_prefill == "auto" and SpecPC().sparse_prefill is False


def test_the_lookahead_counts_toward_going_sparse(monkeypatch):
    """Sparse when the prompt *and* lookahead exceed ``vertical + slash``: 40 prompt tokens with
    ``vertical + slash = 40`` pre-fill densely, and sparsely once a lookahead follows them."""
    target = tiny_model("qwen2")
    ids = torch.tensor([random_ids(40)])
    method = SpecKV(budget=16, window=4, sparse_prefill=True, vertical=20, slash=20)
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[1].shape[1])
        return prefill_sparse(*args, **kwargs)

    monkeypatch.setattr(draftwise.prefill, "prefill_sparse", spy)
    prefill(target, ids, method)
    assert calls == []
    prefill(target, ids, method, torch.tensor([random_ids(3, seed=1)]))
    assert calls == [40]
    prefill(target, ids[:, :39], method, torch.tensor([random_ids(1, seed=1)]))
    assert calls == [40]


@pytest.mark.parametrize(
    "batch, heads, kv_heads, queries, keys, verticals, band, softcap",
    [
        (1, 4, 2, 300, 300, 20, 64, None),  # a pre-fill: GQA, verticals and band
        (2, 6, 2, 250, 400, 0, 100, None),  # the last 250 of 400 positions, no verticals
        (1, 4, 4, 513, 513, 150, 128, 30.0),  # one past a tile, soft-capped (Gemma 2)
    ],
)
@needs_compiler
def test_the_fused_kernel_is_the_reference(batch, heads, kv_heads, queries, keys, verticals, band, softcap):
    """FlexAttention over [gathered verticals | keys] with the block structure built by hand equals the
    plain implementation (float32 rounding)."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(batch, heads, queries, 32, generator=generator)
    k = torch.randn(batch, kv_heads, keys, 32, generator=generator)
    v = torch.randn(batch, kv_heads, keys, 32, generator=generator)
    chosen = None
    if verticals:
        candidates = keys - 40
        chosen = torch.stack(
            [torch.randperm(candidates, generator=generator)[:verticals] for _ in range(batch * kv_heads)]
        )
        chosen = chosen.reshape(batch, kv_heads, verticals)
    expected = vertical_slash_attention(q, k, v, chosen, band, 32**-0.5, softcap)
    got = flex_vertical_slash_attention(q, k, v, chosen, band, 32**-0.5, softcap)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@needs_compiler
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_fused_sparse_prefill_is_the_reference_one(arch, attn):
    """The whole sparse pre-fill (scores, verticals, attention of every layer, pruning) with the fused
    kernel gives the reference kernel's logits, cache and kept positions."""
    target = tiny_model(arch, attn=attn)
    ids = torch.tensor([random_ids(70)])
    guess = torch.tensor([random_ids(6, seed=3)])
    method = SpecKV(budget=24, window=8, sparse_prefill=True, vertical=8, slash=16, sparse_kernel="flex")
    assert_fused_prefill_is_reference(target, ids, guess, method, tolerance=1e-4)


# SpecPC's draft reads the prompt through the same sparse pass.


def specpc(**options) -> SpecPC:
    return SpecPC(budget=24, window=8, kernel=3, neighbourhood=2, first_layer=1, lookahead=2, **options)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_specpc_reads_densely_when_the_sparse_pass_would_hide_nothing(arch):
    """``vertical + slash`` at least the prompt: the draft's pass is its usual one, scores to the bit."""
    draft = tiny_model(arch, attn="sdpa")
    ids = torch.tensor([random_ids(60, seed=2)])
    dense, dense_guess = specpc().token_scores(draft, ids)
    scores, guess = specpc(sparse_prefill=True, vertical=30, slash=30).token_scores(draft, ids)
    assert torch.equal(scores, dense) and torch.equal(guess, dense_guess)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_specpc_with_a_sparse_prefill_reads_the_prompt_sparsely(arch, monkeypatch):
    """``vertical + slash`` below the prompt: every layer's attention runs the sparse pass once, over the
    whole prompt (the lookahead's steps then read the cache densely); the scores move, stay a
    distribution's maxima, and the choice keeps the budget; the model's attention is restored."""
    draft = tiny_model(arch, attn="sdpa")
    ids = torch.tensor([random_ids(80, seed=4)])
    lengths = []
    attention = SparsePrefill.attention

    def spy(self, module, query, *args, **kwargs):
        lengths.append(query.shape[2])
        return attention(self, module, query, *args, **kwargs)

    monkeypatch.setattr(SparsePrefill, "attention", spy)
    dense, _ = specpc().token_scores(draft, ids)
    assert lengths == []
    method = specpc(sparse_prefill=True, vertical=8, slash=16)
    scores, guess = method.token_scores(draft, ids)
    assert lengths == [80] * draft.config.num_hidden_layers
    assert not torch.allclose(scores, dense) and bool(((scores > 0) & (scores <= 1)).all())
    assert guess.shape == (1, 2) and len(method.choose(scores)) == 24
    assert draft.config._attn_implementation == "sdpa"


@needs_compiler
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_specpc_sparse_scores_are_the_same_with_either_kernel(arch):
    """The default kernel ("auto": the fused one, with a compiler) scores as the plain one does."""
    draft = tiny_model(arch)
    ids = torch.tensor([random_ids(80, seed=5)])
    fused, _ = specpc(sparse_prefill=True, vertical=8, slash=16, sparse_kernel="flex").token_scores(
        draft, ids
    )
    plain, _ = specpc(sparse_prefill=True, vertical=8, slash=16, sparse_kernel="reference").token_scores(
        draft, ids
    )
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)


def test_specpc_ranks_verticals_by_their_strongest_weight():
    """Key 1 draws most of one query's attention; key 0 a fair share of every query's: key 1 is SpecPC's
    vertical (its scores take maxima), where SnapKV's mean would pick key 0."""
    rows = torch.tensor([[0.6, 0.0, 0.4], [0.6, 0.0, 0.4], [0.1, 0.9, 0.0]])[None, None, None]  # [1,1,1,3,3]
    assert top_indices(_strongest(rows, None), 1).tolist() == [[[1]]]
    method = SpecKV(budget=8, window=2, kernel=1, reduce="mean")
    assert top_indices(method.score(rows, torch.zeros(1, 1, 3, 2)), 1).tolist() == [[[0]]]


def test_specpc_checks_its_sparse_options():
    with pytest.raises(ValueError, match="slash"):
        SpecPC(sparse_prefill=True, slash=0)


@needs_compiler
def test_past_the_recompile_limit_the_plain_implementation_answers(monkeypatch):
    """A server meets many prompt lengths: once the process holds RECOMPILE_LIMIT compiled variants, a
    new shape runs the plain implementation (the same attention), never dynamo's unfused FlexAttention
    (which materializes every score)."""
    monkeypatch.setattr(draftwise.flex_sparse, "RECOMPILE_LIMIT", 1)
    plain = []

    def counted(*args):
        plain.append(args[0].shape[2])
        return vertical_slash_attention(*args)

    monkeypatch.setattr(draftwise.sparse, "vertical_slash_attention", counted)
    generator = torch.Generator().manual_seed(1)
    for length in (1500, 2100):  # two new buckets of 512: at most one compiles
        q = torch.randn(1, 4, length, 16, generator=generator)
        k, v = torch.randn(2, 1, 2, length, 16, generator=generator)
        chosen = torch.stack([torch.randperm(length - 40, generator=generator)[:100] for _ in range(2)])[None]
        got = draftwise.sparse.fused_attention(q, k, v, chosen, 64, 0.25, None)
        expected = vertical_slash_attention(q, k, v, chosen, 64, 0.25, None)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert plain, "a shape past the limit ran the plain implementation"


@needs_compiler
@pytest.mark.parametrize("kernel", ["flex", "reference"])
def test_the_kernel_setting_picks_the_kernel_and_sliding_layers_keep_the_plain_loop(kernel, monkeypatch):
    """``sparse_kernel="flex"`` runs Gemma 3's full layers on the fused kernel and its sliding layers on
    the plain loop (measured faster there); ``"reference"`` never runs the fused kernel."""
    calls = []

    def spy(name, function):
        def called(query, key, value, verticals, band, *args):
            calls.append((name, band))
            return function(query, key, value, verticals, band, *args)

        monkeypatch.setattr(draftwise.sparse, name, called)

    spy("fused_attention", draftwise.sparse.fused_attention)
    spy("vertical_slash_attention", draftwise.sparse.vertical_slash_attention)
    target = tiny_model("gemma3_text")
    method = SpecKV(budget=24, window=8, sparse_prefill=True, vertical=8, slash=24, sparse_kernel=kernel)
    prefill_sparse(target, torch.tensor([random_ids(70)]), method, torch.tensor([random_ids(6, seed=3)]))
    window = target.config.sliding_window
    full_layers = target.config.layer_types.count("full_attention")
    sliding_layers = len(target.config.layer_types) - full_layers
    assert full_layers and sliding_layers and window != method.slash
    full_kernel = "fused_attention" if kernel == "flex" else "vertical_slash_attention"
    assert calls.count((full_kernel, method.slash)) == full_layers
    assert calls.count(("vertical_slash_attention", window)) == sliding_layers
    assert len(calls) == full_layers + sliding_layers
