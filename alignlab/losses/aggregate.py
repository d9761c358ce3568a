"""How per-token losses become one number: the reduction every recipe states explicitly.

DAPO (Yu 2025) and Dr.GRPO (Liu 2025) differ from GRPO exactly here, so the mode is always an argument
and never hidden inside a loss.
"""

from __future__ import annotations

import torch

AGGREGATE_MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")


def aggregate(per_token: torch.Tensor, response_mask: torch.Tensor, *, mode: str,
              num_tokens: float | torch.Tensor | None = None, constant: float | None = None) -> torch.Tensor:
    """Reduce a per-token loss over the counted tokens to a scalar.

    Modes:
      - `token_mean`: sum(l * m) / N, N = counted tokens in the batch (or `num_tokens` when the batch is a
        micro-batch of a bigger step, so every token of the step weighs the same) — DAPO, SFT.
      - `seq_mean_token_mean`: mean_b [ sum_t(l * m) / sum_t(m) ] — GRPO (Shao 2024, Eq. 3).
      - `seq_mean_token_sum`: mean_b [ sum_t(l * m) ].
      - `seq_mean_token_sum_norm`: sum(l * m) / (B * constant) — Dr.GRPO (Liu 2025): a constant normalizer
        (e.g. the generation budget) instead of each sequence's length.

    Paper: Yu et al. 2025 (DAPO, arXiv:2503.14476) §3.3; Liu et al. 2025 (Dr.GRPO, arXiv:2503.20783) §3.
    Deviation: none.
    Args:
      per_token: (B, T) loss per token.
      response_mask: (B, T) bool, True = the token counts.
      mode: one of AGGREGATE_MODES.
      num_tokens: denominator override for `token_mean`.
      constant: the normalizer for `seq_mean_token_sum_norm` (required there).
    Returns:
      A 0-dim tensor.
    """
    mask = response_mask.to(per_token.dtype)
    masked = per_token * mask  # (B, T)
    if mode == "token_mean":
        denom = mask.sum().clamp(min=1.0) if num_tokens is None else num_tokens
        return masked.sum() / denom
    if mode == "seq_mean_token_mean":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if mode == "seq_mean_token_sum":
        return masked.sum(-1).mean()
    if mode == "seq_mean_token_sum_norm":
        if constant is None or constant <= 0:
            raise ValueError("seq_mean_token_sum_norm needs a positive `constant`")
        return masked.sum() / (per_token.shape[0] * constant)
    raise ValueError(f"unknown aggregate mode {mode!r}; expected one of {AGGREGATE_MODES}")
