"""The rollout protocol: what every generation engine returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Sampling:
    """Sampling settings shared by every engine."""

    max_new_tokens: int = 48
    """Longest completion."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off)."""


@dataclass
class Rollouts:
    """P prompts x n samples, flattened prompt-major (row i*n + j is prompt i's j-th sample).

    `input_ids` is prompt + completion right-padded (each row's prompt starts at column 0), `response_mask`
    True on completion tokens (EOS included), `finished` True where the sample stopped at EOS rather than at
    max_new_tokens. `logprobs`, when the engine records them, is the sampler's log-probability of each
    completion token under softmax(logits / temperature) (before top-k/top-p filtering), 0 elsewhere.
    """

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T) bool
    prompts: list[str]  # (B,) the prompt text of each row
    completions: list[str]  # (B,) decoded completion text (special tokens removed)
    finished: torch.Tensor  # (B,) bool
    n: int = 1
    logprobs: torch.Tensor | None = None  # (B, T) float32, sampler log-probs on response positions

    @property
    def finish_reasons(self) -> list[str]:
        """"stop" (reached EOS) or "length" (hit max_new_tokens), per row."""
        return ["stop" if f else "length" for f in self.finished.tolist()]

    def batch(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "response_mask": self.response_mask}


class RolloutEngine(Protocol):
    def generate(self, prompts: list[str], n: int, sampling: Sampling, *, seed: int | None = None) -> Rollouts: ...

    def sync_weights(self, model) -> None:
        """Make the engine sample from `model`'s current weights (a no-op when it shares the module)."""
