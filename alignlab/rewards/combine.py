"""Several reward sources as one: a weighted sum."""

from __future__ import annotations

import torch

from alignlab.rewards.base import RewardSource


class WeightedSum:
    """sum_i w_i * source_i.score(...)."""

    def __init__(self, sources: list[RewardSource], weights: list[float]):
        if len(sources) != len(weights):
            raise ValueError(f"{len(sources)} sources but {len(weights)} weights")
        self.sources, self.weights = sources, weights

    def score(self, prompts: list[str], completions: list[str], **columns) -> torch.Tensor:
        total = torch.zeros(len(completions))
        for w, source in zip(self.weights, self.sources):
            total += w * source.score(prompts, completions, **columns)
        return total
