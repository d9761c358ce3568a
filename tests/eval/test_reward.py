"""Reward-model metrics: worked numbers, brute-force references for acc@k, limiting cases."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from alignlab.eval.reward import (
    acc_at_k,
    accuracy_by_category,
    best_of_n_curve,
    calibration_table,
    ensemble_agreement,
    expected_calibration_error,
    pairwise_accuracy,
    preference_probabilities,
    reliability_diagram,
    section_score,
)


def test_pairwise_accuracy_counts_ties_as_half():
    chosen = torch.tensor([2.0, 1.0, 0.0, 5.0])
    rejected = torch.tensor([1.0, 1.0, 3.0, 4.0])
    assert pairwise_accuracy(chosen, rejected) == pytest.approx((1 + 0.5 + 0 + 1) / 4)


def test_accuracy_by_category_and_rewardbench_sections():
    """Categories a: 2/2 right, b: 1/3 right, c: 0/1 right.
    Section X = {a, b}: example-weighted (2 + 1) / 5 = 0.6; section Y = {c}: 0; score = mean = 0.3."""
    chosen = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    rejected = torch.zeros(6) + torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]) * 1.0
    cats = ["a", "a", "b", "b", "b", "c"]
    by = accuracy_by_category(chosen, rejected, cats)
    assert by == {"a": {"accuracy": 1.0, "count": 2}, "b": {"accuracy": pytest.approx(1 / 3), "count": 3},
                  "c": {"accuracy": 0.0, "count": 1}}
    out = section_score(by, {"X": ["a", "b"], "Y": ["c"]})
    assert out["sections"]["X"] == pytest.approx(0.6) and out["sections"]["Y"] == 0.0
    assert out["score"] == pytest.approx(0.3)
    assert section_score(by)["score"] == pytest.approx((1 + 1 / 3 + 0) / 3)  # each category its own section


def test_ece_worked_example():
    """Two bins used: [0.2, 0.3) holds p = 0.25, 0.25 with outcomes 0, 1 (freq 0.5, gap 0.25);
    [0.9, 1.0] holds p = 0.95, 0.95 with outcomes 1, 1 (gap 0.05). ECE = 0.5 * 0.25 + 0.5 * 0.05 = 0.15."""
    probs = torch.tensor([0.25, 0.25, 0.95, 0.95])
    outcomes = torch.tensor([0.0, 1.0, 1.0, 1.0])
    assert expected_calibration_error(probs, outcomes, n_bins=10) == pytest.approx(0.15)
    assert sum(r["count"] for r in calibration_table(probs, outcomes)) == 4
    assert expected_calibration_error(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])) == 0.0


def test_symmetrized_probabilities_are_balanced():
    p, y = preference_probabilities(torch.tensor([1.0, -2.0]), torch.tensor([0.0, 0.0]))
    assert torch.allclose(p[:2] + p[2:], torch.ones(2)) and y.tolist() == [1, 1, 0, 0]
    assert p[0] == pytest.approx(1 / (1 + math.exp(-1)))


def test_reliability_diagram_writes_png(tmp_path):
    probs, outcomes = preference_probabilities(torch.randn(50), torch.randn(50))
    path = reliability_diagram(probs, outcomes, tmp_path / "sub" / "rel.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ensemble_agreement():
    """Member 0 and 1 agree on both pairs; member 2 flips pair 2: unanimous 1/2, pairwise agreement
    (1 + 1/2 + 1/2) / 3 = 2/3."""
    chosen = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, -1.0]])
    rejected = torch.zeros(2, 3)
    out = ensemble_agreement(chosen, rejected)
    assert out["unanimous"] == 0.5
    assert out["pairwise_agreement"] == pytest.approx(2 / 3)
    assert out["member_accuracy"] == [1.0, 1.0, 0.5]
    assert out["margin_std"] > 0


def brute_force_acc_at_k(scores: torch.Tensor, gold: torch.Tensor, k: int) -> float:
    """Average over every k-subset of each row of the gold of its top-scored member (ties: mean gold)."""
    total = 0.0
    for s, g in zip(scores.tolist(), gold.tolist()):
        vals = []
        for subset in itertools.combinations(range(len(s)), k):
            best = max(s[i] for i in subset)
            tied = [g[i] for i in subset if s[i] == best]
            vals.append(sum(tied) / len(tied))
        total += sum(vals) / len(vals)
    return total / len(scores)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_acc_at_k_matches_brute_force_including_ties(k):
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (6, 5), generator=gen).float()  # many ties
    gold = torch.rand(6, 5, generator=gen)
    assert acc_at_k(scores, gold, k) == pytest.approx(brute_force_acc_at_k(scores, gold, k))


def test_acc_at_k_worked_example_and_limits():
    """N = 3 sorted by score with gold [1, 0, 0]: P(top item in a random 2-subset) = C(2,1)/C(3,2) = 2/3."""
    scores = torch.tensor([[3.0, 2.0, 1.0]])
    gold = torch.tensor([[1.0, 0.0, 0.0]])
    assert acc_at_k(scores, gold, 2) == pytest.approx(2 / 3)
    assert acc_at_k(scores, gold, 1) == pytest.approx(1 / 3)  # k = 1: a random pick
    assert acc_at_k(scores, gold, 3) == pytest.approx(1.0)  # k = N: the RM's overall pick
    assert acc_at_k(-scores, gold, 3) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        acc_at_k(scores, gold, 4)


def test_best_of_n_curve_oracle_dominates_and_random_is_k1():
    gen = torch.Generator().manual_seed(1)
    gold = torch.rand(8, 6, generator=gen)
    scores = gold + 0.3 * torch.randn(8, 6, generator=gen)
    curve = best_of_n_curve(scores, gold)
    assert curve["k"] == [1, 2, 3, 4, 5, 6]
    assert curve["rm"][0] == pytest.approx(curve["random"])
    assert all(o >= r - 1e-9 for o, r in zip(curve["oracle"], curve["rm"]))
    assert curve["oracle"] == sorted(curve["oracle"])
