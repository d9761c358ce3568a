"""Reward sources behind one protocol, `score(prompts, completions, **columns) -> Tensor[B]`, and their
combination; `ensemble` is pure torch."""

from alignlab.rewards.base import FunctionReward, RewardSource, as_scores
from alignlab.rewards.combine import WeightedSum
from alignlab.rewards.config import RewardSourceConfig, build_reward
from alignlab.rewards.ensemble import MODES, combine, disagreement

__all__ = ["MODES", "FunctionReward", "RewardSource", "RewardSourceConfig", "WeightedSum", "as_scores",
           "build_reward", "combine", "disagreement"]
