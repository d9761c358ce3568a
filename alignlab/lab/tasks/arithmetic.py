"""Arithmetic problems ("What is 37+48?") with an exact-match gold reward.

Levels:
  1. single-digit addition                      "What is 3+5?"
  2. two-digit addition or subtraction          "What is 37+48?", "What is 64-29?"
  3. two-digit add/sub, or a two-digit number times a single digit   "What is 23*7?"
  4. three terms: two-digit ± two-digit ± one-digit                   "What is 45+17-8?"

The canonical completion is `" The answer is 85."` (leading space: it continues the prompt's text).
`extract_answer` reads the number after "answer is", else the last integer in the text.
"""

from __future__ import annotations

import random
import re

LEVELS = (1, 2, 3, 4)
_ANSWER_IS = re.compile(r"answer\s*(?:is|:|=)\s*(-?\d+)", re.IGNORECASE)
_INTEGER = re.compile(r"-?\d+")


def _expression(rng: random.Random, level: int) -> str:
    """One expression string of the given difficulty level."""
    if level == 1:
        return f"{rng.randint(0, 9)}+{rng.randint(0, 9)}"
    if level == 2:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return f"{a}+{b}" if rng.random() < 0.5 else f"{max(a, b)}-{min(a, b)}"
    if level == 3:
        if rng.random() < 0.5:
            return f"{rng.randint(10, 99)}*{rng.randint(2, 9)}"
        return _expression(rng, 2)
    if level == 4:
        ops = [rng.choice("+-") for _ in range(2)]
        return f"{rng.randint(10, 99)}{ops[0]}{rng.randint(10, 99)}{ops[1]}{rng.randint(1, 9)}"
    raise ValueError(f"arithmetic level must be one of {LEVELS}, got {level}")


def _evaluate(expr: str) -> int:
    """Evaluate +, -, * over non-negative integers with the usual precedence (no eval())."""
    total = 0
    for term in re.findall(r"[+-]?[^+-]+", expr):
        sign = -1 if term.startswith("-") else 1
        product = 1
        for factor in term.lstrip("+-").split("*"):
            product *= int(factor)
        total += sign * product
    return total


def prompt_for(expr: str) -> str:
    """The question text for an expression."""
    return f"What is {expr}?"


def completion_for(answer: int | str) -> str:
    """The canonical completion for an answer."""
    return f" The answer is {answer}."


def problems(n: int, *, level: int, seed: int) -> list[dict]:
    """`n` seeded problems as `dict(prompt=..., answer=str, level=int)`."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        expr = _expression(rng, level)
        out.append({"prompt": prompt_for(expr), "answer": str(_evaluate(expr)), "level": level})
    return out


def extract_answer(text: str) -> str | None:
    """The integer a completion commits to, as a string: the number after "answer is" if present,
    else the last integer in the text; None if it has no integer."""
    match = _ANSWER_IS.search(text)
    if match:
        return str(int(match.group(1)))
    numbers = _INTEGER.findall(text)
    return str(int(numbers[-1])) if numbers else None


def gold_reward(completions: list[str], answers: list[str | int]) -> list[float]:
    """Exact match: 1.0 if `extract_answer(completion)` equals the answer, else 0.0."""
    if len(completions) != len(answers):
        raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
    return [float(extract_answer(c) == str(int(a))) for c, a in zip(completions, answers)]
