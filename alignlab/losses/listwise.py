"""Listwise ranking losses: B prompts x K completions, ranked by `scores` (higher = better).

`valid` (B, K) bool marks real completions; padded slots (a prompt with fewer than K completions) change
nothing. Both losses are the ranking term only; the recipe adds the SFT term on the best completion.
"""

from __future__ import annotations

import torch


def _ranking_accuracy(policy_mean_logprobs: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    # fraction of valid pairs with s_i < s_j that the policy orders p_i < p_j   (B,), 0 where no such pair
    ordered = (scores.unsqueeze(-1) < scores.unsqueeze(-2)) & valid.unsqueeze(-1) & valid.unsqueeze(-2)
    right = ordered & (policy_mean_logprobs.unsqueeze(-1) < policy_mean_logprobs.unsqueeze(-2))
    return (right.sum((-2, -1)) / ordered.sum((-2, -1)).clamp(min=1)).to(policy_mean_logprobs.dtype).detach()


def rrhf_loss(policy_mean_logprobs: torch.Tensor, scores: torch.Tensor, *,
              valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RRHF ranking loss: sum over pairs with s_i < s_j of max(0, p_i - p_j), p the mean log-prob.

    Paper: Yuan, Yuan, Tan, Wang, Huang, Huang 2023 (RRHF: Rank Responses to Align Language Models with
    Human Feedback without tears, arXiv:2304.05302) Eq. 2, with the length-normalized p_i of Eq. 1; the full
    loss L_rank + L_ft (Eq. 4) gets its SFT term on the best completion in the recipe.
    Deviation: none (a sum over pairs, not a mean, as in the paper; ties s_i = s_j add nothing).
    Args:
      policy_mean_logprobs: (B, K) per-token MEAN log-prob p of each completion.
      scores: (B, K) score of each completion (reward model, verifier, or rank), higher = better.
      valid: (B, K) bool, True = a real completion.
    Returns:
      losses (B,); ranking_accuracy (B,): fraction of strictly ordered valid pairs the policy orders right.
    """
    p = policy_mean_logprobs
    # worse[b, i, j] = s_i < s_j, both valid: completion i should have the lower p   (B, K, K)
    worse = (scores.unsqueeze(-1) < scores.unsqueeze(-2)) & valid.unsqueeze(-1) & valid.unsqueeze(-2)
    hinge = torch.relu(p.unsqueeze(-1) - p.unsqueeze(-2))  # max(0, p_i - p_j)   (B, K, K)
    losses = (hinge * worse).sum((-2, -1))  # (B,)
    return losses, _ranking_accuracy(p, scores, valid)


def pro_loss(policy_mean_logprobs: torch.Tensor, scores: torch.Tensor, *, valid: torch.Tensor,
             beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """PRO loss: Plackett-Luce negative log-likelihood of the score ranking under the policy's mean log-probs.

    Sort completions best-first y(1), ..., y(n) by score; with q = beta * p:
      loss = -sum_k log( exp(q(k)) / sum_{j >= k} exp(q(j)) ) = -sum_k [q(k) - logsumexp_{j >= k} q(j)]
    (the last term is log 1 = 0, so k = 1..n-1 as in the paper).
    Paper: Song, Yu, Li, Yu, Huang, Li, Wang 2023 (Preference Ranking Optimization for Human Alignment,
    arXiv:2306.17492) §3, L_PRO with the length-normalized score r(x, y) = mean log-prob.
    Deviation: `beta` scales the scores (1 = paper); the paper's optional reward-gap temperature is not
    implemented. Tied scores are ordered by position (a stable sort).
    Args:
      policy_mean_logprobs: (B, K) per-token MEAN log-prob of each completion.
      scores: (B, K) score of each completion, higher = better.
      valid: (B, K) bool, True = a real completion.
      beta: scale of the policy scores.
    Returns:
      losses (B,); ranking_accuracy (B,): fraction of strictly ordered valid pairs the policy orders right.
    """
    valid = valid.bool()
    sort_key = scores.to(policy_mean_logprobs.dtype).masked_fill(~valid, float("-inf"))
    order = torch.sort(sort_key, dim=-1, descending=True, stable=True).indices  # best first, padding last
    q = torch.gather(beta * policy_mean_logprobs, -1, order)  # (B, K) sorted
    keep = torch.gather(valid, -1, order)
    # padding gets a finite floor (not -inf) so that exp() is 0 and the backward pass stays NaN-free
    q_masked = q.masked_fill(~keep, torch.finfo(q.dtype).min)
    suffix_lse = torch.logcumsumexp(q_masked.flip(-1), dim=-1).flip(-1)  # logsumexp_{j >= k} q(j)   (B, K)
    losses = -((q_masked - suffix_lse) * keep).sum(-1)  # (B,)
    return losses, _ranking_accuracy(policy_mean_logprobs, scores, valid)
