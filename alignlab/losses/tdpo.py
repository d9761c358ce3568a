"""Token-level DPO (TDPO): DPO plus the difference of sequential forward KLs to the reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F

TDPO_VARIANTS = ("tdpo1", "tdpo2")


def tdpo_loss(policy_chosen_seq_logprobs: torch.Tensor, policy_rejected_seq_logprobs: torch.Tensor,
              ref_chosen_seq_logprobs: torch.Tensor, ref_rejected_seq_logprobs: torch.Tensor,
              chosen_seq_kl: torch.Tensor, rejected_seq_kl: torch.Tensor, *, beta: float, alpha: float = 0.5,
              variant: str = "tdpo2") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TDPO loss: -log s(beta * (h - delta)), h the DPO margin and delta a difference of sequential KLs.

      h       = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))
      SeqKL(y) = sum_t KL(pi_ref(.|x, y_<t) || pi(.|x, y_<t)) over the completion tokens of y
      TDPO1: delta = SeqKL(y_l) - SeqKL(y_w)
      TDPO2: delta = alpha * (SeqKL(y_l) - sg(SeqKL(y_w)))     (sg = stop-gradient)

    TDPO2 stops the gradient through the chosen KL (so the chosen completion's KL is not pushed up) and
    scales the KL term by alpha; TDPO1 has no alpha.
    Paper: Zeng, Liu, Ma, Yang, Zhang, Wang 2024 (Token-level Direct Preference Optimization,
    arXiv:2404.11999) §4, L_TDPO1 and L_TDPO2 (u(x, y_w, y_l) - delta(x, y_w, y_l) with beta factored out).
    Deviation: none. The authors' code logs rewards beta * (h-part + SeqKL); ours are the usual
    beta * (policy - ref), so metrics line up with the other pairwise losses.
    Args:
      policy_chosen_seq_logprobs, policy_rejected_seq_logprobs: (B,) summed completion log-probs, policy.
      ref_chosen_seq_logprobs, ref_rejected_seq_logprobs: (B,) the same under the reference policy.
      chosen_seq_kl, rejected_seq_kl: (B,) SeqKL(pi_ref || pi) of each completion, carrying the policy's
        gradient (full-vocabulary per-token KLs summed over completion tokens by the caller).
      beta: KL strength.
      alpha: weight of the KL term in TDPO2 (ignored by TDPO1).
      variant: "tdpo1" or "tdpo2".
    Returns:
      losses (B,), chosen_rewards (B,), rejected_rewards (B,) (beta * (policy - ref), detached).
    """
    if variant not in TDPO_VARIANTS:
        raise ValueError(f"unknown TDPO variant {variant!r}; expected one of {TDPO_VARIANTS}")
    lr_c = policy_chosen_seq_logprobs - ref_chosen_seq_logprobs  # (B,)
    lr_r = policy_rejected_seq_logprobs - ref_rejected_seq_logprobs
    if variant == "tdpo1":
        delta = rejected_seq_kl - chosen_seq_kl  # SeqKL(y_l) - SeqKL(y_w)
    else:
        delta = alpha * (rejected_seq_kl - chosen_seq_kl.detach())  # alpha * (SeqKL(y_l) - sg(SeqKL(y_w)))
    losses = -F.logsigmoid(beta * (lr_c - lr_r - delta))
    return losses, beta * lr_c.detach(), beta * lr_r.detach()
