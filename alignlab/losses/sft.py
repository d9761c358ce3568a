"""The supervised fine-tuning objective."""

from __future__ import annotations

import torch


def nll_loss(logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of the target tokens: -log p(y_t | y_<t).

    Paper: the maximum-likelihood objective of SFT as used by Ouyang et al. 2022 (InstructGPT,
    arXiv:2203.02155) §3.5; reduce it with `aggregate(..., mode=...)` over the completion tokens only.
    Deviation: none.
    Args:
      logprobs: (B, T) per-token log-probs (0 where the token does not count).
    Returns:
      (B, T) per-token loss.
    """
    return -logprobs
