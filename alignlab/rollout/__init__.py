"""Generation engines behind one protocol: `generate(prompts, n, sampling) -> Rollouts`."""

from alignlab.rollout.base import RolloutEngine, Rollouts, Sampling
from alignlab.rollout.hf import HFEngine

BACKENDS = ("auto", "hf")


def make_engine(model, tokenizer, *, backend: str = "auto", batch_size: int = 64) -> RolloutEngine:
    """The generation engine for `model`: `hf` (transformers `generate`, the reference); `auto` picks the
    fastest one available."""
    if backend in ("auto", "hf"):
        return HFEngine(model, tokenizer, batch_size=batch_size)
    raise ValueError(f"unknown rollout backend {backend!r}; expected one of {BACKENDS}")


__all__ = ["BACKENDS", "HFEngine", "RolloutEngine", "Rollouts", "Sampling", "make_engine"]
