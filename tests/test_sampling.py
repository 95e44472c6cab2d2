"""Sampling semantics: ``generate``'s tokens follow the distribution temperature and top-p define.

The reference distribution is written from the definitions on the tiny model's own logits:
``p = softmax(logits / T)``; top-p keeps the smallest set of most probable tokens whose mass reaches
``top_p`` (a token is in it when the tokens more probable than it hold less than ``top_p``), and
renormalises. Thousands of seeded generations are compared with it by a chi-square test (deterministic
seeds: the test gives the same verdict on every run) and no token outside the nucleus may appear.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from helpers import random_ids, tiny_model

from draftwise import Full, generate
from draftwise.shared_prefill import SharedPrefill

PROMPT = random_ids(10, seed=21)


def nucleus_distribution(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """``[V]`` float64 probabilities of the next token under temperature ``T`` and top-p."""
    p = (logits.double() / temperature).softmax(-1)
    if top_p >= 1:
        return p
    order = sorted(range(p.shape[0]), key=lambda t: -float(p[t]))
    q = torch.zeros_like(p)
    before = 0.0
    for t in order:
        if before >= top_p:
            break
        assert abs(before - top_p) > 1e-6, "a token sits on the nucleus edge: pick another top_p"
        q[t] = p[t]
        before += float(p[t])
    return q / q.sum()


def chi_square_p_value(counts: Counter, expected: torch.Tensor) -> float:
    """p-value of observed ``counts`` against probabilities ``expected`` ``[V]``; bins expecting fewer
    than 5 draws are pooled."""
    total = sum(counts.values())
    bins, pooled_observed, pooled_expected = [], 0, 0.0
    for token in range(expected.shape[0]):
        e = float(expected[token]) * total
        if e >= 5:
            bins.append((counts.get(token, 0), e))
        else:
            pooled_observed += counts.get(token, 0)
            pooled_expected += e
    if pooled_expected > 0:
        bins.append((pooled_observed, pooled_expected))
    statistic = sum((o - e) ** 2 / e for o, e in bins)
    freedom = len(bins) - 1
    assert freedom >= 3, "too few bins to test the shape"
    return float(torch.special.gammaincc(torch.tensor(freedom / 2.0), torch.tensor(statistic / 2.0)))


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=4)


def next_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1]


@pytest.mark.parametrize("temperature, top_p", [(0.6, 1.0), (1.0, 1.0), (2.0, 0.6), (1.3, 0.85)])
def test_first_token_follows_temperature_and_top_p(model, tokenizer, temperature, top_p):
    expected = nucleus_distribution(next_logits(model, PROMPT), temperature, top_p)
    assert (expected > 0).sum() >= 5, "the nucleus holds several tokens"
    shared = SharedPrefill(
        observed_queries=0
    )  # one pre-fill for all draws: each generation samples from its own copy
    draws = 3000
    counts = Counter(
        generate(
            model, None, tokenizer, PROMPT, method=Full(), max_new_tokens=1,
            temperature=temperature, top_p=top_p, seed=seed, reuse=shared,
        ).token_ids[0]
        for seed in range(draws)
    )  # fmt: skip
    outside = {t: c for t, c in counts.items() if expected[t] == 0}
    assert not outside, f"tokens outside the nucleus were sampled: {outside}"
    assert chi_square_p_value(counts, expected) > 1e-4
    # The shape is the temperature's: the same draws are far from T=1's distribution (unless T=1).
    if temperature != 1.0 or top_p != 1.0:
        plain = nucleus_distribution(next_logits(model, PROMPT), 1.0, 1.0)
        assert chi_square_p_value(counts, plain) < 1e-6


def test_every_step_samples_with_temperature_and_top_p(model, tokenizer):
    """The second token, drawn after a decoding step, follows the mixture over first tokens of each
    one's nucleus distribution (the first token's law times the second's given it)."""
    temperature, top_p = 1.5, 0.8
    first = nucleus_distribution(next_logits(model, PROMPT), temperature, top_p)
    stops = {1}
    mixture = torch.zeros_like(first)
    for token in torch.nonzero(first).flatten().tolist():
        if token not in stops:
            mixture += first[token] * nucleus_distribution(
                next_logits(model, PROMPT + [token]), temperature, top_p
            )
    mixture /= mixture.sum()
    shared = SharedPrefill(observed_queries=0)
    seconds = Counter()
    for seed in range(1500):
        out = generate(
            model, None, tokenizer, PROMPT, method=Full(), max_new_tokens=2,
            temperature=temperature, top_p=top_p, seed=10_000 + seed, reuse=shared,
        )  # fmt: skip
        if len(out.token_ids) == 2:
            seconds[out.token_ids[1]] += 1
    assert not {t for t in seconds if mixture[t] == 0}, "a second token outside every nucleus"
    assert chi_square_p_value(seconds, mixture) > 1e-4


def test_seeded_sampling_repeats_and_seeds_differ(model, tokenizer):
    kwargs = dict(method=Full(), max_new_tokens=8, temperature=1.2, top_p=0.9)
    a = generate(model, None, tokenizer, PROMPT, seed=3, **kwargs).token_ids
    assert generate(model, None, tokenizer, PROMPT, seed=3, **kwargs).token_ids == a
    assert any(generate(model, None, tokenizer, PROMPT, seed=s, **kwargs).token_ids != a for s in range(4, 8))


def test_chi_square_helper_by_hand():
    """The test's own statistics: a fair die passes, a loaded one fails."""
    fair = torch.full((6,), 1 / 6, dtype=torch.float64)
    assert chi_square_p_value(Counter({i: 100 for i in range(6)}), fair) > 0.99
    assert chi_square_p_value(Counter({0: 200, 1: 80, 2: 80, 3: 80, 4: 80, 5: 80}), fair) < 1e-6
    q = nucleus_distribution(torch.tensor([0.5, 0.25, 0.15, 0.1]).log(), 1.0, 0.7)
    assert q.tolist() == [pytest.approx(2 / 3), pytest.approx(1 / 3), 0.0, 0.0]
