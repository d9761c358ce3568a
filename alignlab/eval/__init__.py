"""Evaluation: policy statistics, KL to a reference, reward-model accuracy, frontiers."""

from alignlab.eval.policy import sequence_kl

__all__ = ["sequence_kl"]
