"""The rollout protocol: what every generation engine returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from alignlab.errors import ConfigError


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
    min_new_tokens: int = 0
    """EOS cannot be sampled before this many new tokens (for fixed-length benchmarks; 0 = off)."""

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], "
                              f"got {self.min_new_tokens}")


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


def check_request(prompts: list[str], n: int) -> None:
    """Reject a malformed `generate` call before any compute."""
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise ConfigError("prompts must be a list of strings")
    if not prompts:
        raise ConfigError("prompts is empty")
    if n < 1:
        raise ConfigError(f"n (samples per prompt) must be >= 1, got {n}")


def assemble_rollouts(tokenizer, prompts: list[str], prompt_ids: list[list[int]], completions: list[list[int]],
                      finished: list[bool], n: int, logprobs: list[list[float]] | None = None) -> Rollouts:
    """Rollouts in the documented layout from per-row prompt ids, completion ids (EOS included) and, optionally,
    the sampler log-prob of each completion token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) + len(c) for p, c in zip(prompt_ids, completions))
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attn = torch.zeros((len(prompts), width), dtype=torch.long)
    resp = torch.zeros((len(prompts), width), dtype=torch.bool)
    lp = torch.zeros((len(prompts), width), dtype=torch.float32) if logprobs is not None else None
    for i, (p, c) in enumerate(zip(prompt_ids, completions)):
        end = len(p) + len(c)
        ids[i, :end] = torch.tensor(p + c, dtype=torch.long)
        attn[i, :end] = 1
        resp[i, len(p):end] = True
        if lp is not None:
            lp[i, len(p):end] = torch.tensor(logprobs[i], dtype=torch.float32)
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    return Rollouts(input_ids=ids, attention_mask=attn, response_mask=resp, prompts=list(prompts),
                    completions=texts, finished=torch.tensor(finished, dtype=torch.bool), n=n, logprobs=lp)
