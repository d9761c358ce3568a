"""Generation engines behind one protocol: `generate(prompts, n, sampling) -> Rollouts`."""

from alignlab.rollout.base import Rollouts, Sampling
from alignlab.rollout.hf import HFEngine

__all__ = ["HFEngine", "Rollouts", "Sampling"]
