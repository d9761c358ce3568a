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

    `input_ids` is prompt + completion right-padded, `response_mask` True on completion tokens (EOS
    included), `finished` True where the sample stopped at EOS rather than at max_new_tokens.
    """

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T) bool
    prompts: list[str]  # (B,) the prompt text of each row
    completions: list[str]  # (B,) decoded completion text (special tokens removed)
    finished: torch.Tensor  # (B,) bool
    n: int = 1

    def batch(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "response_mask": self.response_mask}


class RolloutEngine(Protocol):
    def generate(self, prompts: list[str], n: int, sampling: Sampling, *, seed: int | None = None) -> Rollouts: ...
