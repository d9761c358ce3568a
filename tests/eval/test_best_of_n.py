"""Best-of-n helpers: the analytic KL, selection, and the unbiased best-of-k estimator against brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from alignlab.eval.best_of_n import (
    best_of_k_curve,
    best_of_k_weights,
    bon_kl,
    expected_best_of_k,
    powers_of_two,
    select_best,
)


def test_bon_kl_hand_worked():
    """n=1: log 1 - 0 = 0.  n=2: log 2 - 1/2 = 0.19315.  n=4: log 4 - 3/4 = 0.63629."""
    assert bon_kl(1) == 0.0
    assert bon_kl(2) == pytest.approx(math.log(2) - 0.5) and bon_kl(2) == pytest.approx(0.193147, abs=1e-6)
    assert bon_kl(4) == pytest.approx(0.636294, abs=1e-6)
    values = [bon_kl(n) for n in range(1, 200)]
    assert all(b > a for a, b in zip(values, values[1:]))  # strictly increasing in n
    assert bon_kl(10**6) < math.log(10**6)  # and below log n
    with pytest.raises(ValueError, match="n >= 1"):
        bon_kl(0)


def test_select_best_per_prompt_and_first_on_ties():
    # prompt 0: [0.1, 0.9, 0.3] -> row 1; prompt 1: [2, 5, 5] -> first max, row 4; prompt 2: all equal -> row 6
    scores = torch.tensor([0.1, 0.9, 0.3, 2.0, 5.0, 5.0, 7.0, 7.0, 7.0])
    assert select_best(scores, 3).tolist() == [1, 4, 6]
    assert select_best(scores, 1).tolist() == list(range(9))  # n = 1 keeps every sample
    with pytest.raises(ValueError, match="multiple of n=2"):
        select_best(scores, 2)


def test_weights_hand_worked_and_sum_to_one():
    """N=4, k=2: C(i-1,1)/C(4,2) for i=1..4 = 0, 1/6, 2/6, 3/6."""
    w = best_of_k_weights(4, 2)
    assert torch.allclose(w, torch.tensor([0, 1 / 6, 2 / 6, 3 / 6], dtype=torch.float64))
    assert torch.allclose(best_of_k_weights(5, 1), torch.full((5,), 0.2, dtype=torch.float64))  # k=1: the mean
    assert best_of_k_weights(5, 5).tolist() == [0, 0, 0, 0, 1]  # k=N: the maximum
    for n, k in ((1000, 7), (3000, 1000)):  # no overflow at large N
        w = best_of_k_weights(n, k)
        assert torch.isfinite(w).all() and w.sum().item() == pytest.approx(1.0, abs=1e-9)


def brute_force(scores: list[float], values: list[float], k: int) -> float:
    """Average, over every k-subset, of the value of the subset's best score (first index on ties)."""
    subsets = list(itertools.combinations(range(len(scores)), k))
    best = [max(s, key=lambda j: (scores[j], -j)) for s in subsets]
    return sum(values[j] for j in best) / len(subsets)


def test_expected_best_of_k_equals_enumeration_over_all_subsets():
    torch.manual_seed(0)
    scores = torch.randint(0, 4, (5, 7)).float()  # many ties on purpose
    values = torch.randn(5, 7)
    for k in range(1, 8):
        got = expected_best_of_k(scores, k, values)
        want = torch.tensor([brute_force(s.tolist(), v.tolist(), k) for s, v in zip(scores, values)])
        assert torch.allclose(got, want, atol=1e-6), (k, got, want)
        own = expected_best_of_k(scores, k)  # values default to the scores: E[max of k]
        assert torch.allclose(own, torch.tensor([brute_force(s.tolist(), s.tolist(), k) for s in scores]))


def test_expected_best_of_k_hand_worked():
    """Scores [3, 1, 2]: pairs {3,1}->3, {3,2}->3, {1,2}->2, mean 8/3; k=1 is the mean 2, k=3 the max 3."""
    scores = torch.tensor([[3.0, 1.0, 2.0]])
    assert expected_best_of_k(scores, 2).item() == pytest.approx(8 / 3)
    assert expected_best_of_k(scores, 1).item() == pytest.approx(2.0)
    assert expected_best_of_k(scores, 3).item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="1 <= k <= N"):
        expected_best_of_k(scores, 4)


def test_curve_matches_selection_at_n_and_mean_at_1():
    torch.manual_seed(1)
    proxy, gold = torch.randn(6, 8), torch.randn(6, 8)
    curve = best_of_k_curve(proxy, gold)
    assert list(curve) == [1, 2, 4, 8]
    assert curve[1].item() == pytest.approx(gold.mean().item(), abs=1e-6)
    chosen = select_best(proxy.flatten(), 8)
    assert curve[8].item() == pytest.approx(gold.flatten()[chosen].mean().item(), abs=1e-6)
    own = best_of_k_curve(proxy)
    assert all(own[a] <= own[b] for a, b in zip([1, 2, 4], [2, 4, 8]))  # E[max of k] never falls with k
    assert powers_of_two(6) == [1, 2, 4, 6] and powers_of_two(1) == [1] and powers_of_two(8) == [1, 2, 4, 8]
