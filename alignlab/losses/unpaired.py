"""Preference losses on unpaired data: each completion is labelled desirable or undesirable on its own."""

from __future__ import annotations

import torch


def kto_loss(policy_seq_logprobs: torch.Tensor, ref_seq_logprobs: torch.Tensor, desirable: torch.Tensor,
             policy_kl_logprobs: torch.Tensor, ref_kl_logprobs: torch.Tensor, *, beta: float,
             desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KTO loss: a prospect-theoretic value of each completion's implicit reward against a KL reference point.

      r  = log pi(y|x) - log pi_ref(y|x)                                   (B,)
      z0 = max(0, mean_j [log pi(y'_j|x_j) - log pi_ref(y'_j|x_j)]), detached   (y' from a mismatched pair)
      desirable:   w_d * (1 - s(beta * (r - z0)))
      undesirable: w_u * (1 - s(beta * (z0 - r)))

    Paper: Ethayarajh, Xu, Muennighoff, Jurafsky, Kiela 2024 (KTO: Model Alignment as Prospect Theoretic
    Optimization, arXiv:2402.01306) Eq. 8: L = E[lambda_y - v(x, y)] with lambda_D = w_d, lambda_U = w_u.
    Deviation: none. z0 is the mean over the mismatched pairs the caller passes; under data parallelism TRL
    averages it over all ranks, so gather `policy_kl_logprobs - ref_kl_logprobs` first to match it. The paper
    suggests weights with w_d * n_D / (w_u * n_U) in [1, 4/3].
    Args:
      policy_seq_logprobs: (B,) summed completion log-probs under the policy.
      ref_seq_logprobs: (B,) the same under the reference policy.
      desirable: (B,) bool, True = the completion is desirable.
      policy_kl_logprobs: (M,) summed log-probs of mismatched completions y' (paired with another prompt).
      ref_kl_logprobs: (M,) the same under the reference policy.
      beta: KL strength.
      desirable_weight, undesirable_weight: lambda_D and lambda_U.
    Returns:
      losses (B,); rewards (B,) = beta * r, detached; kl: 0-dim, the reference point z0 (detached).
    """
    kl = (policy_kl_logprobs - ref_kl_logprobs).mean().clamp(min=0).detach()  # z0 = max(0, E[KL estimate])
    logratios = policy_seq_logprobs - ref_seq_logprobs  # r   (B,)
    desirable_losses = desirable_weight * (1.0 - torch.sigmoid(beta * (logratios - kl)))
    undesirable_losses = undesirable_weight * (1.0 - torch.sigmoid(beta * (kl - logratios)))
    losses = torch.where(desirable.bool(), desirable_losses, undesirable_losses)
    return losses, beta * logratios.detach(), kl
