"""Simulated Bradley-Terry labeler and label flipping."""

from __future__ import annotations

import math
import random

import pytest

from alignlab.lab.labeler import flip_labels, label_pairs, preference_probability


def _inputs(n, seed=0):
    rng = random.Random(seed)
    a = [rng.random() for _ in range(n)]
    b = [rng.random() for _ in range(n)]
    return [f"p{i}" for i in range(n)], [f"a{i}" for i in range(n)], [f"b{i}" for i in range(n)], a, b


def test_probability():
    assert preference_probability(0.9, 0.1, 0.0) == 1.0
    assert preference_probability(0.1, 0.9, 0.0) == 0.0
    assert preference_probability(0.5, 0.5, 0.0) == 0.5
    assert preference_probability(0.7, 0.2, 0.5) == pytest.approx(1 / (1 + math.exp(-1.0)))
    with pytest.raises(ValueError):
        preference_probability(0, 0, -1)


def test_noiseless_always_agrees_with_gold():
    pairs = label_pairs(*_inputs(300), temperature=0.0, seed=1)
    assert all(p.extra["gold_agrees"] and p.score_chosen >= p.score_rejected for p in pairs)
    for i, p in enumerate(pairs):
        assert {p.chosen, p.rejected} == {f"a{i}", f"b{i}"} and p.prompt == f"p{i}"


def test_high_temperature_is_near_chance():
    """With T=100 each label is a coin flip up to |g_a-g_b|/400 < 0.25%; for n=4000 the agreement rate
    has sd 0.8%, so 0.5 +- 0.05 is a > 6-sigma bound."""
    pairs = label_pairs(*_inputs(4000), temperature=100.0, seed=2)
    agree = sum(p.extra["gold_agrees"] for p in pairs) / len(pairs)
    assert abs(agree - 0.5) < 0.05


def test_moderate_temperature_matches_bradley_terry():
    prompts, a, b, _, _ = _inputs(4000)
    ga, gb = [0.8] * 4000, [0.6] * 4000
    pairs = label_pairs(prompts, a, b, ga, gb, temperature=0.2, seed=3)
    expected = 1 / (1 + math.exp(-1.0))  # sigmoid(0.2 / 0.2) = 0.731; sd of the rate 0.7%
    assert abs(sum(p.extra["gold_agrees"] for p in pairs) / 4000 - expected) < 0.03


def test_seed_determinism():
    x = label_pairs(*_inputs(100), temperature=0.3, seed=5)
    assert x == label_pairs(*_inputs(100), temperature=0.3, seed=5)
    assert x != label_pairs(*_inputs(100), temperature=0.3, seed=6)


def test_length_mismatch():
    p, a, b, ga, gb = _inputs(3)
    with pytest.raises(ValueError):
        label_pairs(p, a, b[:2], ga, gb)


def test_flip_labels():
    pairs = label_pairs(*_inputs(200), temperature=0.0, seed=0)
    flipped = flip_labels(pairs, 0.25, seed=0)
    assert flipped == flip_labels(pairs, 0.25, seed=0)
    changed = [i for i, (p, q) in enumerate(zip(pairs, flipped)) if p.chosen != q.chosen]
    assert len(changed) == 50
    for i in changed:
        p, q = pairs[i], flipped[i]
        assert (q.chosen, q.rejected, q.score_chosen) == (p.rejected, p.chosen, p.score_rejected)
        assert q.extra["flipped"] and not q.extra["gold_agrees"]
    assert all(p.extra["gold_agrees"] and "flipped" not in p.extra for p in pairs)  # inputs untouched
    assert flip_labels(pairs, 0.0) == pairs
