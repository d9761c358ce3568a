"""Reward sources and their combination; `ensemble` is pure torch."""

from alignlab.rewards.ensemble import MODES, combine, disagreement

__all__ = ["MODES", "combine", "disagreement"]
