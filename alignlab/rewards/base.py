"""The reward-source protocol and the simplest source: a plain Python function.

    source = FunctionReward(my_fn)                   # my_fn(prompts, completions, **columns) -> list | Tensor
    scores = source.score(prompts, completions, answer=answers)   # float32 tensor (B,)

Every source returns one float32 CPU tensor `(B,)` (or `(B, K)` for a multi-objective source); the extra
keyword arguments are the prompt dataset's other columns, one list of length B per column. Recipes score
through `checked_scores`, which also refuses a wrong shape or a NaN/inf score with a RewardError naming the
source, the row of the batch and its prompt.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from alignlab.errors import AlignlabError, DataError


class RewardError(AlignlabError, ValueError):
    """A reward source failed on a batch (user code raised, or returned the wrong thing); names the source."""


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
            raise RewardError(f"{where} must return one number per completion: {e}") from None
    if scores.ndim == 0 or scores.shape[0] != n:
        raise RewardError(f"{where} returned {tuple(scores.shape)} scores for {n} completions")
    return scores


def column(columns: dict, name: str, n: int, where: str) -> list:
    """The dataset column `name` (one value per completion) that a source needs; DataError otherwise."""
    if name not in columns:
        raise DataError(f"reward source {where!r} needs the column {name!r}; the prompt rows have "
                        f"{sorted(columns) or 'no other columns'}", field=name)
    values = list(columns[name])
    if len(values) != n:
        raise DataError(f"reward source {where!r}: column {name!r} has {len(values)} values for {n} completions",
                        field=name)
    return values


class FunctionReward:
    """A Python function as a reward source: `fn(prompts, completions, **columns)`.

    The function receives only the dataset columns its signature names (all of them if it takes
    `**kwargs`), so `def reward(prompts, completions, answer): ...` works on GSM8K-style rows. An exception
    in it becomes a RewardError naming the source (`python:NAME`), the original chained as its cause.
    """

    def __init__(self, fn: Callable, name: str | None = None):
        self.fn, self.name = fn, name or getattr(fn, "__name__", "reward")
        params = inspect.signature(fn).parameters
        self._takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        self._names = set(params)

    def score(self, prompts: list[str], completions: list[str], **columns) -> torch.Tensor:
        kwargs = columns if self._takes_all else {k: v for k, v in columns.items() if k in self._names}
        try:
            values = self.fn(prompts, completions, **kwargs)
        except Exception as e:
            raise RewardError(f"reward source 'python:{self.name}' raised {type(e).__name__}: {e}") from e
        return as_scores(values, len(completions), f"reward source 'python:{self.name}'")


def source_name(source) -> str:
    """The spec-like name of a source for messages: `python:FN`, `rm:PATH`, `math:answer`, `a + b` for sums."""
    if isinstance(source, FunctionReward):
        return f"python:{source.name}"
    if getattr(source, "sources", None):  # WeightedSum / EnsembleReward
        return " + ".join(source_name(s) for s in source.sources)
    for attr, prefix in (("name", ""), ("answer_column", "math:"), ("tests_column", "code:")):
        if getattr(source, attr, None):
            return f"{prefix}{getattr(source, attr)}"
    return type(source).__name__


def checked_scores(source: RewardSource, prompts: list[str], completions: list[str], *, name: str | None = None,
                   **columns) -> torch.Tensor:
    """`source.score(prompts, completions, **columns)` as float32 `(B,)`, or a RewardError: the one call every
    online recipe (ppo, grpo, bon) scores through.

    A multi-objective `(B, K)` result, or a NaN/inf score, stops the run: the message names the source
    (`name`, default `source_name(source)`), the first bad row's index within the batch, its prompt and
    completion (truncated), how many rows are bad, and what to change.
    """
    name = name or f"reward source {source_name(source)!r}"
    scores = source.score(prompts, completions, **columns)
    if scores.dim() != 1:
        raise RewardError(f"{name} returned scores of shape {tuple(scores.shape)}; online RL needs one score per "
                          "completion (combine a multi-objective source into one with reward.weights)")
    bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
    if bad:
        i = bad[0]
        raise RewardError(
            f"{name} returned {float(scores[i])} for row {i} of the batch of {len(completions)} (prompt "
            f"{prompts[i][:60]!r}, completion {completions[i][:60]!r}); {len(bad)} row(s) non-finite: {bad[:8]}. "
            "Scores must be finite: make the source return a number for such completions (e.g. a failure score "
            "of 0 or -1), or, for an rm: source, check the reward model's weights and its stored normalization")
    return scores.float()
