"""Statistics of a policy's samples against a reference policy."""

from __future__ import annotations

import torch

from alignlab.models import compute_logprobs


@torch.no_grad()
def sequence_kl(policy, reference, batch: dict[str, torch.Tensor], *, batch_size: int = 32) -> torch.Tensor:
    """Per-sample Monte-Carlo estimate of KL(policy || reference): sum_t log pi(y_t) - log ref(y_t).

    Unbiased for the sequence-level KL when the samples in `batch` were drawn from `policy` at
    temperature 1 (the k1 estimator, Schulman 2020 "Approximating KL divergence").
    Args:
      batch: input_ids, attention_mask (B, T) and response_mask (B, T) bool over the sampled tokens.
    Returns:
      (B,) KL estimate per sample, in nats.
    """
    out = []
    for start in range(0, batch["input_ids"].shape[0], batch_size):
        part = {k: v[start:start + batch_size] for k, v in batch.items()}
        pol = compute_logprobs(policy, {k: v.to(policy.device) for k, v in part.items()}).seq_logprobs
        ref = compute_logprobs(reference, {k: v.to(reference.device) for k, v in part.items()}).seq_logprobs
        out.append((pol - ref.to(pol.device)).float().cpu())
    return torch.cat(out)
