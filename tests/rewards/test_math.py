"""Final-answer extraction and numeric equivalence for verifiable math rewards."""

from __future__ import annotations

import pytest
import torch

from alignlab.errors import DataError
from alignlab.rewards import MathReward, answers_match, build_reward, extract_answer
from alignlab.rewards.config import RewardSourceConfig
from alignlab.rewards.math import gold_answer

GSM8K_GOLD = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
              "Altogether she sold 48+24 = <<48+24=72>>72 clips.\n#### 72")


@pytest.mark.parametrize(("text", "expected"), [
    ("She has 16 - 3 - 4 = 9 eggs.\n#### 9", "9"),
    ("#### 1,000\n", "1,000"),
    (r"So the area is $\boxed{\frac{3}{4}}$.", r"\frac{3}{4}"),
    (r"\boxed{x^{2}+\sqrt{y_{1}}} and later \boxed{-3}", "-3"),  # the last box
    (r"nested \boxed{\frac{\frac{1}{2}}{3}}", r"\frac{\frac{1}{2}}{3}"),
    ("The answer is 42.", "42"),
    ("Thus, the final answer is: $-\\frac{1}{2}$. Done", "-\\frac{1}{2}"),
    ("**Final Answer:** 12", "12"),
    ("First 3 apples, then 5, so -7 in total", "-7"),  # last-number fallback
    ("I gave 3.5 kg and 1,250 g", "1,250"),
    ("no digits here", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(("pred", "gold", "same"), [
    ("1,000", "1000", True),
    ("$1,000", "1000", True),
    ("\\$18.00", "18", True),
    ("50%", "50", True),
    ("42.0", "42", True),
    ("0.75", r"\frac{3}{4}", True),
    ("3/4", "0.75", True),
    (r"\dfrac{1}{3}", "0.333333333", True),  # within 1e-6 relative
    (r"\frac12", "0.5", True),
    (r"-\frac{1}{2}", "-0.5", True),
    ("-7", "7", False),
    ("x = 5", "5", True),
    ("1.0000001", "1", True),
    ("1.001", "1", False),
    ("41", "42", False),
    ("1,2", "12", False),  # a list, not a thousands separator
    (r"\text{5 apples}", "5 apples", True),
    (r"x^{2} + 1", r"x^{2}+1", True),  # non-numeric: normalized string comparison
    (r"\pi", r"2\pi", False),
    (None, "1", False),
    ("", "", False),
])
def test_answers_match(pred, gold, same):
    assert answers_match(pred, gold) is same


def test_gold_column_may_be_a_gsm8k_solution_or_a_plain_answer():
    assert gold_answer(GSM8K_GOLD) == "72"
    assert gold_answer(r"\frac{\pi}{2}") == r"\frac{\pi}{2}"  # taken whole, not reduced to its last number
    assert gold_answer(0.5) == "0.5" and gold_answer(r"so \boxed{7}") == "7"


def test_math_reward_scores_and_spec():
    completions = ["48/2 = 24, 48 + 24 = 72. The answer is 72.", "I think it is 70.", r"\boxed{72}",
                   "It is 24 then 48 then 72\n#### 72.0", "nothing"]
    golds = [GSM8K_GOLD] * 4 + ["72"]
    expected = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    scores = MathReward().score(["q"] * 5, completions, answer=golds)
    assert scores.dtype == torch.float32 and torch.equal(scores, expected)
    source = build_reward(RewardSourceConfig(sources=["math:solution"]))
    assert torch.equal(source.score(["q"] * 5, completions, solution=golds), expected)


def test_missing_answer_column_names_it():
    with pytest.raises(DataError, match="'answer'.*\\['tests'\\]"):
        MathReward().score(["q"], ["1"], tests=["x"])
