"""Pairwise preference losses without a reference policy: SimPO, CPO, ORPO.

Each returns the UNREDUCED per-pair preference term (B,) first, then detached diagnostics. CPO and ORPO
are "preference term + NLL on the chosen completion" in their papers; the NLL term (`nll_loss` +
`aggregate`) is added by the recipe, so it stays visible there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def simpo_loss(policy_chosen_mean_logprobs: torch.Tensor, policy_rejected_mean_logprobs: torch.Tensor, *,
               beta: float, gamma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO loss -log s(beta * mean_c - beta * mean_r - gamma): length-normalized, reference-free, margin gamma.

    Paper: Meng, Xia, Chen 2024 (SimPO: Simple Preference Optimization with a Reference-Free Reward,
    arXiv:2405.14734) Eq. 6; the reward is beta / |y| * log pi(y|x), i.e. beta times the MEAN log-prob.
    Deviation: none. `gamma` is the target reward margin gamma itself. The authors' code takes
    `gamma_beta_ratio` = gamma / beta instead (loss -log s(beta * (mean_c - mean_r - gamma_beta_ratio))), so
    gamma = beta * gamma_beta_ratio; TRL's CPOTrainer(loss_type="simpo") calls gamma `simpo_gamma`.
    Args:
      policy_chosen_mean_logprobs, policy_rejected_mean_logprobs: (B,) per-token MEAN completion log-probs.
      beta: reward scale (the paper uses 2 - 10).
      gamma: target reward margin (reward units, the paper uses 0.5 - 1.5); 0 removes the margin.
    Returns:
      losses (B,), chosen_rewards (B,), rejected_rewards (B,) = beta * mean log-prob, detached.
    """
    r_c, r_r = beta * policy_chosen_mean_logprobs, beta * policy_rejected_mean_logprobs
    losses = -F.logsigmoid(r_c - r_r - gamma)  # -log s(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma)
    return losses, r_c.detach(), r_r.detach()


def cpo_loss(policy_chosen_seq_logprobs: torch.Tensor, policy_rejected_seq_logprobs: torch.Tensor, *,
             beta: float, label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CPO preference term -log s(beta * (log pi(y_w) - log pi(y_l))): DPO with a uniform reference.

    Paper: Xu, Sharaf, Chen, Tan, Shen, Van Durme, Murray, Kim 2024 (Contrastive Preference Optimization,
    arXiv:2401.08417) Eq. 3 (L_prefer); the full CPO loss L_prefer + L_NLL gets its NLL term in the recipe.
    Deviation: none; label_smoothing eps > 0 is the cDPO-style (1 - eps) / eps mix TRL also offers (0 = paper).
    Args:
      policy_chosen_seq_logprobs, policy_rejected_seq_logprobs: (B,) summed completion log-probs.
      beta: temperature.
      label_smoothing: assumed label-flip rate eps in [0, 0.5).
    Returns:
      losses (B,), chosen_rewards (B,), rejected_rewards (B,) = beta * log-prob, detached.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    z = beta * (policy_chosen_seq_logprobs - policy_rejected_seq_logprobs)  # (B,)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return losses, beta * policy_chosen_seq_logprobs.detach(), beta * policy_rejected_seq_logprobs.detach()


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    # log(1 - exp(x)) for x < 0, switching formulas at -log 2 to avoid cancellation (Maechler 2012)
    return torch.where(x < -math.log(2.0), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(policy_chosen_mean_logprobs: torch.Tensor, policy_rejected_mean_logprobs: torch.Tensor, *,
              beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ORPO odds-ratio term -beta * log s(log odds(y_w) - log odds(y_l)) on mean log-probs.

    log odds(y) = log p - log(1 - p) with log p the per-token mean log-prob, computed as logp - log1mexp(logp).
    Paper: Hong, Lee, Thorne 2024 (ORPO: Monolithic Preference Optimization without Reference Model,
    arXiv:2403.07691) Eq. 7 (L_OR; odds from Eq. 4 with the length-normalized likelihood), weighted by
    lambda = beta in Eq. 6 (L_ORPO = L_SFT + lambda L_OR); the recipe adds L_SFT.
    Deviation: none. TRL's `ORPOTrainer.odds_ratio_loss` returns the opposite sign (+beta * log s(.)) and
    subtracts it in the caller. Mean log-probs must be < 0 (p = 1 has infinite odds).
    Args:
      policy_chosen_mean_logprobs, policy_rejected_mean_logprobs: (B,) per-token MEAN completion log-probs.
      beta: the weight lambda of the odds-ratio term.
    Returns:
      losses (B,); chosen_rewards (B,), rejected_rewards (B,) = beta * mean log-prob, detached;
      log_odds_ratio (B,) = log odds(y_w) - log odds(y_l), detached.
    """
    lp_c, lp_r = policy_chosen_mean_logprobs, policy_rejected_mean_logprobs
    # log(odds_c / odds_r) = (lp_c - lp_r) - (log(1 - e^lp_c) - log(1 - e^lp_r))
    log_odds_ratio = (lp_c - lp_r) - (_log1mexp(lp_c) - _log1mexp(lp_r))  # (B,)
    losses = -beta * F.logsigmoid(log_odds_ratio)
    return losses, beta * lp_c.detach(), beta * lp_r.detach(), log_odds_ratio.detach()
