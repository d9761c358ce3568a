r"""Verifiable math rewards: extract the final answer of a completion and compare it with the gold answer.

    extract_answer("... so she has 18 eggs.\n#### 18")          # "18"
    extract_answer(r"the area is \boxed{\frac{3}{4}}")            # "\frac{3}{4}"
    answers_match("0.75", r"\frac{3}{4}")                         # True
    MathReward().score(prompts, completions, answer=answers)      # 1.0 where the final answer is right

Extraction, first rule that applies: the text after the last GSM8K `####` marker; the content of the last
`\boxed{...}` (nested braces allowed); the last "the answer is X" / "final answer: X"; the last number.
Equivalence: both sides parse as numbers (commas as thousands separators, `$`, `%`, `\frac{a}{b}`, `a/b`,
signs, a trailing `.0`, `x = 5` -> 5) and agree within a relative tolerance of 1e-6; otherwise the two
normalized strings (spaces, `\left`/`\right`, `\text{}`, `$`, a trailing period removed) are equal.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

import torch

from alignlab.rewards.base import column

_ANSWER_IS = re.compile(r"(?:final answer|the answer)\s*(?:is|:|=)\s*:?\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_FRAC = re.compile(r"\\[dt]?frac\s*(?:\{([^{}]*)\}|(\d))\s*(?:\{([^{}]*)\}|(\d))")  # \frac{a}{b}, \frac12
_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}")


def _boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None if there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:  # `\boxed 5`
        rest = text[start:].split(None, 1)
        return rest[1].split("$")[0].strip() if len(rest) > 1 else None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j].strip()
    return None  # unbalanced: the completion was cut off inside the box


def extract_answer(text: str) -> str | None:
    """The final answer of a solution (see the module docstring for the rules), or None if there is none."""
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip().splitlines()
        return tail[0].strip() if tail and tail[0].strip() else None
    boxed = _boxed(text)
    if boxed:
        return boxed
    said = _ANSWER_IS.findall(text)
    if said:
        answer = said[-1].strip().strip("*").strip()
        answer = re.sub(r"\.\s.*$", "", answer).rstrip(".").strip()  # up to the end of its sentence
        if answer.count("$") >= 2:
            answer = answer.split("$")[1]
        if answer:
            return answer
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _clean(s: str) -> str:
    s = s.strip()
    for _ in range(3):
        s = _TEXT.sub(r"\1", s)
    s = re.sub(r"\\left|\\right|\\!|\\,|\\;|\\ |\\\$|\\%|\$|%", "", s)
    s = s.replace("\\cdot", "*").replace("−", "-")
    if "=" in s:  # `x = 5`: the right-hand side
        s = s.rsplit("=", 1)[1]
    return re.sub(r"\s+", "", s).rstrip(".").lower()


def _number(s: str) -> Fraction | None:
    """`s` (already `_clean`ed) as an exact number, or None."""
    s = _FRAC.sub(lambda m: f"({m[1] or m[2]})/({m[3] or m[4]})", s)
    s = s.replace("{", "").replace("}", "")
    m = re.fullmatch(r"(-?)\(?(-?[\d,]*\.?\d+)\)?(?:/\(?(-?[\d,]*\.?\d+)\)?)?", s)
    if not m:
        return None
    sign, num, den = m.groups()
    if "," in num and not re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", num):
        return None  # "1,2" is a list, not a number
    try:
        value = Fraction(num.replace(",", "")) / (Fraction(den.replace(",", "")) if den else 1)
    except (ValueError, ZeroDivisionError):
        return None
    return -value if sign else value


def answers_match(pred: str | None, gold: str) -> bool:
    """Whether the predicted final answer equals the gold one: numerically (relative tolerance 1e-6) when
    both parse as numbers, else as normalized strings."""
    if pred is None:
        return False
    p, g = _clean(str(pred)), _clean(str(gold))
    if not p or not g:
        return False
    pn, gn = _number(p), _number(g)
    if pn is not None and gn is not None:
        return pn == gn or math.isclose(float(pn), float(gn), rel_tol=1e-6)
    return p == g


def gold_answer(gold) -> str:
    """The answer in a gold column value: a GSM8K solution (`#### 42`) or a boxed answer is extracted,
    anything else (e.g. `42`, `\\frac{\\pi}{2}`, 0.5) is taken whole."""
    text = str(gold)
    return (extract_answer(text) or "") if ("####" in text or "\\boxed" in text) else text


class MathReward:
    """1.0 when the completion's final answer equals the row's gold answer, else 0.0.

    Args:
        answer_column: the prompt dataset's column holding the gold answer (a number, an expression, or a
            full GSM8K solution ending in `#### 42`).
    """

    def __init__(self, answer_column: str = "answer"):
        self.answer_column = answer_column

    def score(self, prompts: list[str], completions: list[str], **columns) -> torch.Tensor:
        golds = column(columns, self.answer_column, len(completions), f"math:{self.answer_column}")
        return torch.tensor([float(answers_match(extract_answer(c), gold_answer(g)))
                             for c, g in zip(completions, golds)], dtype=torch.float32)
