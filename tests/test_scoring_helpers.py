"""Small contracts the mutation run (docs/results/mutation.md) found unchecked: helper defaults and
errors, pooling at the edges of negative rows, and which option an error names."""

from __future__ import annotations

import pytest
import torch

from draftwise import SpecKV
from draftwise.scoring import reduce_rows, smooth


def test_reduce_rows_defaults_to_max_and_names_a_bad_reduction():
    rows = torch.tensor([0.1, 0.7, 0.2, 0.4, 0.3, 0.6]).view(1, 1, 2, 1, 3)  # [B, G, H/G, q, k]
    assert reduce_rows(rows).flatten().tolist() == pytest.approx([0.4, 0.7, 0.6])
    assert reduce_rows(rows, "mean").flatten().tolist() == pytest.approx([0.25, 0.5, 0.4])
    with pytest.raises(ValueError, match=r"^reduce must be 'max' or 'mean', got 'median'$"):
        reduce_rows(rows, "median")


def test_max_pool_edges_see_only_real_tokens():
    """No padding value enters the max: an all-negative edge stays negative."""
    scores = torch.tensor([-3.0, -1.0, -2.0, -5.0, -4.0])
    assert smooth(scores, 3, "max").tolist() == [-1.0, -1.0, -1.0, -2.0, -4.0]
    assert smooth(scores, 4, "max").tolist() == [-1.0, -1.0, -1.0, -1.0, -2.0]  # 2 left, 1 right


@pytest.mark.parametrize("option", ["lookahead", "vertical", "slash"])
def test_speckv_errors_name_the_option(option):
    with pytest.raises(ValueError, match=rf"^{option} must be a positive integer, got 0$"):
        SpecKV(budget=64, **{option: 0})


def test_smooth_defaults_to_max_and_names_a_bad_pool():
    scores = torch.tensor([[0.0, 5.0, 0.0, 0.0, 1.0]])
    assert torch.equal(smooth(scores, 3), smooth(scores, 3, "max"))
    assert smooth(scores, 3).tolist() == [[5.0, 5.0, 5.0, 1.0, 1.0]]
    with pytest.raises(ValueError, match="^pool must be 'max' or 'avg', got 'median'$"):
        smooth(scores, 3, "median")


def test_a_kernel_of_one_returns_the_scores_themselves():
    scores = torch.rand(2, 7, dtype=torch.float64)
    assert smooth(scores, 1) is scores


def test_an_even_kernel_takes_one_more_token_on_the_left():
    scores = torch.tensor([0.0, 5.0, 0.0, 0.0, 2.0, 0.0])
    assert smooth(scores, 2).tolist() == [0.0, 5.0, 5.0, 0.0, 2.0, 2.0]  # window [i - 1, i]
    assert smooth(scores, 4).tolist() == [5.0, 5.0, 5.0, 5.0, 2.0, 2.0]  # window [i - 2, i + 1]
