"""Arithmetic problems, answer extraction and exact-match reward."""

from __future__ import annotations

import pytest

from alignlab.lab.tasks import arithmetic


@pytest.mark.parametrize("level", arithmetic.LEVELS)
def test_problems_answers_are_correct(level):
    probs = arithmetic.problems(200, level=level, seed=0)
    assert probs == arithmetic.problems(200, level=level, seed=0)
    for p in probs:
        expr = p["prompt"].removeprefix("What is ").removesuffix("?")
        assert str(eval(expr)) == p["answer"]  # noqa: S307 - trusted, generated digits and + - *
        assert p["level"] == level


def test_levels_differ_in_difficulty():
    assert all(len(p["prompt"]) <= len("What is 9+9?") for p in arithmetic.problems(50, level=1, seed=0))
    assert any("*" in p["prompt"] for p in arithmetic.problems(50, level=3, seed=0))
    with pytest.raises(ValueError):
        arithmetic.problems(1, level=9, seed=0)


def test_extract_answer():
    assert arithmetic.extract_answer(" The answer is 85.") == "85"
    assert arithmetic.extract_answer("answer: -12") == "-12"
    assert arithmetic.extract_answer("37+48 makes 85") == "85"
    assert arithmetic.extract_answer("The answer is 007, not 8") == "7"
    assert arithmetic.extract_answer("no idea") is None


def test_gold_reward_exact_match():
    completions = [arithmetic.completion_for(85), " The answer is 84.", "85", "nothing"]
    assert arithmetic.gold_reward(completions, ["85", 85, "85", "85"]) == [1.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError):
        arithmetic.gold_reward(["1"], [])
