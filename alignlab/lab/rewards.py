"""The lab tasks' gold rewards as reward functions, for `--reward.sources lab:sentiment-gold`.

The CLI turns `lab:<name>` into `python:alignlab.lab.rewards:<function>` (see `LAB_REWARDS`).
"""

from __future__ import annotations

from alignlab.lab.tasks import arithmetic, sentiment


def sentiment_gold(prompts: list[str], completions: list[str]) -> list[float]:
    """Gold sentiment of prompt + completion (the review opening is part of the review)."""
    return sentiment.gold_reward([p + c for p, c in zip(prompts, completions)])


def arithmetic_gold(prompts: list[str], completions: list[str], answer: list) -> list[float]:
    """1.0 when the completion's answer equals the row's `answer` column, else 0.0."""
    return arithmetic.gold_reward(completions, answer)


LAB_REWARDS = {"sentiment-gold": "sentiment_gold", "arithmetic-gold": "arithmetic_gold"}
"""Lab reward name (without `lab:`) -> function in this module."""
