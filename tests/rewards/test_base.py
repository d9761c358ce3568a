"""`checked_scores`: the one scoring call of the online recipes, and the names it gives sources."""

from __future__ import annotations

import pytest
import torch

from alignlab.rewards import (
    EnsembleReward,
    FunctionReward,
    MathReward,
    RewardError,
    WeightedSum,
    checked_scores,
    source_name,
)


def constant(*values):
    def fn(prompts, completions):
        return list(values)

    return FunctionReward(fn, name="m:const")


def test_finite_scores_pass_through_as_float32():
    out = checked_scores(constant(1, 2.5), ["p", "q"], ["a", "b"])
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 2.5]


def test_non_finite_score_names_source_row_prompt_and_the_fix():
    prompts = ["a long prompt " * 10, "second prompt"]
    with pytest.raises(RewardError) as info:
        checked_scores(constant(0.0, float("-inf")), prompts, ["x", "y"])
    message = str(info.value)
    assert message.startswith("reward source 'python:m:const' returned -inf for row 1 of the batch of 2 "
                              "(prompt 'second prompt', completion 'y'); 1 row(s) non-finite: [1]")
    assert "make the source return a number" in message
    with pytest.raises(RewardError, match="returned nan for row 0 .*prompt 'a long prompt a long prompt a long "
                                          "prompt a long prompt a lo',"):  # truncated to 60 characters
        checked_scores(constant(float("nan"), float("nan")), prompts, ["x", "y"], name="the reward")


def test_multi_objective_scores_are_refused():
    two = FunctionReward(lambda prompts, completions: torch.ones(2, 3), name="two")
    with pytest.raises(RewardError, match=r"'python:two' returned scores of shape \(2, 3\)"):
        checked_scores(two, ["p", "q"], ["a", "b"])


def test_source_names():
    fn = constant(1.0)
    assert source_name(fn) == "python:m:const"
    assert source_name(MathReward("gold")) == "math:gold"
    assert source_name(WeightedSum([fn, MathReward()], [1.0, 2.0])) == "python:m:const + math:answer"
    assert source_name(EnsembleReward([fn, fn])) == "python:m:const + python:m:const"
