"""Reward sources behind one protocol, `score(prompts, completions, **columns) -> Tensor[B]`, and their
combination; `ensemble` is pure torch."""

from alignlab.rewards.base import FunctionReward, RewardError, RewardSource, as_scores, checked_scores, source_name
from alignlab.rewards.code import CodeReward, extract_code
from alignlab.rewards.combine import EnsembleReward, WeightedSum
from alignlab.rewards.config import SPEC_KINDS, RewardSourceConfig, build_reward, build_source
from alignlab.rewards.ensemble import MODES, combine, disagreement
from alignlab.rewards.math import MathReward, answers_match, extract_answer
from alignlab.rewards.model import RewardModelSource
from alignlab.rewards.rules import Rule, RuleReward
from alignlab.rewards.sandbox import SandboxResult, containment, run_many, run_sandboxed

__all__ = ["MODES", "SPEC_KINDS", "CodeReward", "EnsembleReward", "FunctionReward", "MathReward", "RewardError",
           "RewardModelSource", "RewardSource", "RewardSourceConfig", "Rule", "RuleReward", "SandboxResult",
           "WeightedSum", "answers_match", "as_scores", "build_reward", "build_source", "checked_scores", "combine",
           "containment", "disagreement", "extract_answer", "extract_code", "run_many", "run_sandboxed",
           "source_name"]
