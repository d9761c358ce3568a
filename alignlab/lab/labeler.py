"""A simulated human labeler: turns gold scores into noisy pairwise preference labels.

The labeler follows a Bradley-Terry model over the gold reward, as assumed by reward modeling
(Christiano et al. 2017, arXiv:1706.03741, eq. 1; Stiennon et al. 2020, arXiv:2009.01325):

    P(a preferred over b) = sigmoid((g_a - g_b) / temperature)

`temperature = 0` is a noiseless labeler (the higher gold score always wins; ties are a coin flip);
larger temperatures approach coin flips. Each pair records the gold scores of its chosen and rejected
completions, so experiments can measure how often the labels (and later a reward model) agree with gold.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence

from alignlab.data.types import PreferencePair, Text


def preference_probability(gold_a: float, gold_b: float, temperature: float) -> float:
    """P(a preferred over b) = sigmoid((gold_a - gold_b) / temperature); a step function at temperature 0."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    diff = gold_a - gold_b
    if temperature == 0 or diff == 0:
        return 0.5 if diff == 0 else float(diff > 0)
    z = diff / temperature
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def label_pairs(
    prompts: Sequence[Text],
    completions_a: Sequence[Text],
    completions_b: Sequence[Text],
    gold_scores_a: Sequence[float],
    gold_scores_b: Sequence[float],
    *,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[PreferencePair]:
    """Label each (a, b) pair by a Bradley-Terry draw over gold scores.

    Returns one `PreferencePair` per prompt with `score_chosen` / `score_rejected` = gold scores and
    `extra = {"gold_agrees": bool, "p_chosen": float}`: whether the label prefers the completion with
    the higher gold score (a tie counts as agreeing), and the probability the labeler had of choosing the
    completion it chose. Deterministic for a given `seed`.
    """
    lengths = {len(prompts), len(completions_a), len(completions_b), len(gold_scores_a), len(gold_scores_b)}
    if len(lengths) != 1:
        raise ValueError(f"label_pairs needs equally long inputs, got lengths {sorted(lengths)}")
    rng = random.Random(seed)
    pairs = []
    for i, prompt in enumerate(prompts):
        g_a, g_b = float(gold_scores_a[i]), float(gold_scores_b[i])
        p_a = preference_probability(g_a, g_b, temperature)
        a, b = completions_a[i], completions_b[i]
        a_wins = rng.random() < p_a
        chosen, rejected, g_chosen, g_rejected = (a, b, g_a, g_b) if a_wins else (b, a, g_b, g_a)
        pairs.append(PreferencePair(
            prompt=prompt, chosen=chosen, rejected=rejected, score_chosen=g_chosen, score_rejected=g_rejected,
            extra={"gold_agrees": g_chosen >= g_rejected, "p_chosen": p_a if a_wins else 1.0 - p_a},
            source="lab:labeler", row=i + 1,
        ))
    return pairs


def flip_labels(pairs: Sequence[PreferencePair], rate: float, *, seed: int = 0) -> list[PreferencePair]:
    """Copies of `pairs` with exactly `round(rate * len(pairs))` of them (chosen at random) swapped.

    A flipped pair swaps chosen/rejected and their scores, sets `extra["flipped"] = True` and negates
    `extra["gold_agrees"]` when present (unless the gold scores tie). Used for label-noise experiments
    (e.g. conservative DPO / robust DPO). The inputs are not modified.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"flip rate must be in [0, 1], got {rate}")
    flipped = set(random.Random(seed).sample(range(len(pairs)), round(rate * len(pairs))))
    out = []
    for i, pair in enumerate(pairs):
        extra = dict(pair.extra)
        if i not in flipped:
            out.append(dataclasses.replace(pair, extra=extra))
            continue
        extra["flipped"] = True
        if "gold_agrees" in extra and pair.score_chosen != pair.score_rejected:
            extra["gold_agrees"] = not extra["gold_agrees"]
        out.append(dataclasses.replace(
            pair, chosen=pair.rejected, rejected=pair.chosen, score_chosen=pair.score_rejected,
            score_rejected=pair.score_chosen, extra=extra,
            margin=None if pair.margin is None else -pair.margin,
        ))
    return out
