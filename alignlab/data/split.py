"""Held-out splits, deterministic from the seed."""

from __future__ import annotations

import random
from typing import TypeVar

T = TypeVar("T")


def train_eval_split(items: list[T], eval_fraction: float, *, seed: int) -> tuple[list[T], list[T]]:
    """Shuffle a copy with `seed` and hold out `eval_fraction` of it (at least one item when the fraction
    is positive and there are at least two items)."""
    if eval_fraction <= 0 or len(items) < 2:
        return list(items), []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(items) - 1, max(1, round(len(items) * eval_fraction)))
    held = set(order[:n_eval])
    return [x for i, x in enumerate(items) if i not in held], [items[i] for i in sorted(held)]
