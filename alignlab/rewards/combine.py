"""Several reward sources as one: a weighted sum, or an ensemble combined by mean / min / mean - lam * std."""

from __future__ import annotations

import torch

from alignlab.rewards.base import RewardSource
from alignlab.rewards.ensemble import MODES, combine, disagreement


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


class EnsembleReward:
    """N reward sources as an ensemble: `combine(members, mode=..., lam=...)` of their (B, N) scores.

    The members must be on a common scale (e.g. whitened reward models); see `alignlab.rewards.ensemble`
    for the modes and their papers (Christiano 2017; Coste 2023: mean, WCO = min, UWO = mean_minus_std).

    Args:
        sources: the N members, each returning (B,) scores.
        mode: one of MODES ("mean", "min", "mean_minus_std").
        lam: weight of the std penalty in "mean_minus_std" (>= 0).
    """

    def __init__(self, sources: list[RewardSource], mode: str = "mean", lam: float = 1.0):
        if not sources:
            raise ValueError("an ensemble needs at least one source")
        if mode not in MODES:
            raise ValueError(f"unknown ensemble mode {mode!r}; expected one of {MODES}")
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.sources, self.mode, self.lam = sources, mode, lam

    def members(self, prompts: list[str], completions: list[str], **columns) -> torch.Tensor:
        """(B, N) score of each completion under each member."""
        scores = [s.score(prompts, completions, **columns) for s in self.sources]
        bad = [tuple(s.shape) for s in scores if s.shape != (len(completions),)]
        if bad:
            raise ValueError(f"ensemble members must return (B,) = ({len(completions)},) scores, got {bad}")
        return torch.stack(scores, dim=1)

    def disagreement(self, prompts: list[str], completions: list[str], **columns) -> torch.Tensor:
        """(B,) std of the members' scores: where the ensemble is unsure (e.g. what to label next)."""
        return disagreement(self.members(prompts, completions, **columns))

    def score(self, prompts: list[str], completions: list[str], **columns) -> torch.Tensor:
        return combine(self.members(prompts, completions, **columns), mode=self.mode, lam=self.lam)
