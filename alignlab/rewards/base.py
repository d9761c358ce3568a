"""The reward-source protocol and the simplest source: a plain Python function.

    source = FunctionReward(my_fn)                   # my_fn(prompts, completions, **columns) -> list | Tensor
    scores = source.score(prompts, completions, answer=answers)   # float32 tensor (B,)

Every source returns one float32 CPU tensor `(B,)` (or `(B, K)` for a multi-objective source); the extra
keyword arguments are the prompt dataset's other columns, one list of length B per column.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class RewardSource(Protocol):
    def score(self, prompts: list[str], completions: list[str], **columns) -> torch.Tensor: ...


def as_scores(values, n: int, where: str) -> torch.Tensor:
    """`values` (list of numbers or tensor) as a float32 CPU tensor of length n; a clear error otherwise."""
    scores = values.detach().float().cpu() if isinstance(values, torch.Tensor) else None
    if scores is None:
        try:
            scores = torch.tensor([float(v) for v in values], dtype=torch.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where} must return one number per completion: {e}") from None
    if scores.shape[0] != n:
        raise ValueError(f"{where} returned {scores.shape[0]} scores for {n} completions")
    return scores


class FunctionReward:
    """A Python function as a reward source: `fn(prompts, completions, **columns)`.

    The function receives only the dataset columns its signature names (all of them if it takes
    `**kwargs`), so `def reward(prompts, completions, answer): ...` works on GSM8K-style rows.
    """

    def __init__(self, fn: Callable, name: str | None = None):
        self.fn, self.name = fn, name or getattr(fn, "__name__", "reward")
        params = inspect.signature(fn).parameters
        self._takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        self._names = set(params)

    def score(self, prompts: list[str], completions: list[str], **columns) -> torch.Tensor:
        kwargs = columns if self._takes_all else {k: v for k, v in columns.items() if k in self._names}
        return as_scores(self.fn(prompts, completions, **kwargs), len(completions), f"reward function {self.name}")
