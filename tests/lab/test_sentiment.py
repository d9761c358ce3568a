"""Gold sentiment reward on hand-written sentences, and the review grammar."""

from __future__ import annotations

import math
import statistics

import pytest

from alignlab.lab.tasks import sentiment
from alignlab.lab.tasks.sentiment import SCALE, gold_reward


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_polarity_and_neutral():
    pos, neg, neutral, empty = gold_reward(
        ["The movie was great!", "the movie was terrible", "the film runs about two hours.", ""])
    assert pos > 0.5 > neg
    assert neutral == 0.5 and empty == 0.5


def test_worked_numbers():
    """great = 1.5 -> sigmoid(0.6*1.5); "not very good" = -(1.5*1.0) -> sigmoid(-0.9);
    "good. not bad" = 1 + 1 = 2 (the negation flips bad) -> sigmoid(1.2)."""
    got = gold_reward(["great", "not very good", "good. not bad"])
    assert got == pytest.approx([_sig(SCALE * 1.5), _sig(-SCALE * 1.5), _sig(SCALE * 2.0)])


def test_negation_flips_within_window_only():
    good, not_good, never_boring = gold_reward(["it was good", "it was not good", "it was never boring"])
    assert not_good == pytest.approx(1 - good)
    assert never_boring > 0.5
    assert gold_reward(["i didn't enjoy it"])[0] < 0.5  # "n't" negates too
    # The negation reaches 3 words, and punctuation ends it.
    assert gold_reward(["not at all in any way good"])[0] > 0.5
    assert gold_reward(["not this, good"])[0] > 0.5


def test_intensifier_strengthens():
    plain, very, extremely = gold_reward(["good", "very good", "extremely good"])
    assert 0.5 < plain < very < extremely
    bad, very_bad = gold_reward(["bad", "really bad"])
    assert very_bad < bad < 0.5
    assert gold_reward(["very good and good"])[0] == pytest.approx(_sig(SCALE * 2.5))  # scales one word


def test_more_words_more_extreme_and_bounded():
    scores = gold_reward(["great " * k for k in range(1, 6)] + ["awful " * 50])
    assert scores[:5] == sorted(scores[:5]) and all(0 <= s <= 1 for s in scores)
    assert scores[-1] < 1e-6


def test_gold_reward_tensor_matches():
    texts = ["good", "bad movie", "plot"]
    assert sentiment.gold_reward_tensor(texts).tolist() == pytest.approx(gold_reward(texts))


def test_reviews_deterministic_and_seeded():
    assert sentiment.reviews(50, seed=3) == sentiment.reviews(50, seed=3)
    assert sentiment.reviews(50, seed=3) != sentiment.reviews(50, seed=4)
    assert sentiment.prompts(20, seed=1) == sentiment.prompts(20, seed=1)


def test_reviews_balanced_and_share_moves_gold():
    balanced = gold_reward(sentiment.reviews(2000, seed=0))
    assert 0.45 < statistics.mean(balanced) < 0.55
    assert 0.4 < statistics.mean(g > 0.5 for g in balanced) < 0.6
    positive = statistics.mean(gold_reward(sentiment.reviews(2000, seed=0, positive_share=0.9)))
    assert positive > 0.65


def test_prompts_are_neutral_openings_of_reviews():
    prompts = sentiment.prompts(100, seed=0)
    assert all(2 <= len(p.split()) <= 6 for p in prompts)
    assert set(gold_reward(prompts)) == {0.5}
    openings = tuple(sentiment.all_openings())
    assert all(r.startswith(openings) for r in sentiment.reviews(100, seed=0))
    for prompt, completion in sentiment.review_pairs(20, seed=0):
        assert completion.startswith(" ") and prompt in openings


def test_gold_reward_of_a_long_intensifier_chain_saturates_without_overflow():
    """Each intensifier multiplies the next polarity word's weight, so a policy that repeats them drives S far
    past exp's range (S = -2 * 2**600 for 600 x "extremely awful"): gold must be 0 (or 1), not an OverflowError."""
    negative, positive = gold_reward(["the film was " + "extremely " * 600 + "awful.",
                                      "the film was " + "extremely " * 600 + "brilliant."])
    assert negative == 0.0 and positive == 1.0
