"""Pairwise preference losses with a reference policy: the DPO family.

Every function takes the four summed completion log-probs (B,) of a batch of pairs and returns
`(losses, chosen_rewards, rejected_rewards)`: the UNREDUCED per-pair loss (B,) and the detached implicit
rewards beta * (policy - ref). Notation in comments: lr_c = policy_c - ref_c, lr_r = policy_r - ref_r,
h = lr_c - lr_r (the DPO log-ratio margin), s(.) = sigmoid, logs(.) = log sigmoid.

Together these cover every `loss_type` of TRL's DPOTrainer (1.16): sigmoid -> `dpo_loss`, sigmoid_norm ->
`dpo_loss` fed mean log-probs, robust, ipo, hinge, exo_pair, nca_pair, bco_pair, sppo_hard, aot, aot_unpaired
-> `aot_pair_loss`, apo_zero, apo_down, discopop; plus ODPO. tests/losses/test_trl_parity.py pins each
against TRL and lists where they differ on purpose.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Pairwise = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _logratios(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
               ref_rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # lr = log pi(y|x) - log pi_ref(y|x)   (B,)
    return policy_chosen - ref_chosen, policy_rejected - ref_rejected


def _rewards(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float):
    # implicit reward r = beta * lr, detached: diagnostics only
    return beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def _smoothed_logistic(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    # (1 - eps) * -logs(z) + eps * -logs(-z): the logistic loss with labels flipped w.p. eps
    return -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def dpo_loss(policy_chosen_seq_logprobs: torch.Tensor, policy_rejected_seq_logprobs: torch.Tensor,
             ref_chosen_seq_logprobs: torch.Tensor, ref_rejected_seq_logprobs: torch.Tensor, *,
             beta: float, label_smoothing: float = 0.0) -> Pairwise:
    """DPO loss -log s(beta h) per pair; with label_smoothing eps > 0 it is conservative DPO (cDPO).

    Paper: Rafailov, Sharma, Mitchell, Ermon, Manning, Finn 2023 (DPO, arXiv:2305.18290) Eq. 7; cDPO:
    Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO", Eq. 3:
    (1 - eps) * -log s(beta h) + eps * -log s(-beta h).
    Deviation: none. TRL 1.16's `sigmoid` silently ignores `label_smoothing` (only robust, exo_pair and aot
    use it); ours always applies it. TRL's `sigmoid_norm` is this function fed mean (length-normalized)
    log-probs. RPO (Pang 2024) adds alpha * NLL(chosen): that term lives in the recipe, not here.
    Args:
      policy_chosen_seq_logprobs, policy_rejected_seq_logprobs: (B,) summed completion log-probs, policy.
      ref_chosen_seq_logprobs, ref_rejected_seq_logprobs: (B,) the same under the reference policy.
      beta: KL strength; the reference is ignored as beta -> 0 (loss -> log 2).
      label_smoothing: assumed label-flip rate eps in [0, 0.5); 0 is plain DPO.
    Returns:
      losses (B,), chosen_rewards (B,), rejected_rewards (B,) with rewards = beta * (policy - ref), detached.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    lr_c, lr_r = _logratios(policy_chosen_seq_logprobs, policy_rejected_seq_logprobs,
                            ref_chosen_seq_logprobs, ref_rejected_seq_logprobs)
    losses = _smoothed_logistic(beta * (lr_c - lr_r), label_smoothing)  # (B,)
    return losses, *_rewards(lr_c, lr_r, beta)


def robust_dpo_loss(policy_chosen_seq_logprobs: torch.Tensor, policy_rejected_seq_logprobs: torch.Tensor,
                    ref_chosen_seq_logprobs: torch.Tensor, ref_rejected_seq_logprobs: torch.Tensor, *,
                    beta: float, label_smoothing: float) -> Pairwise:
    """Robust DPO (rDPO): the unbiased DPO loss under labels flipped with known rate eps.

    loss = [(1 - eps) * -log s(beta h) - eps * -log s(-beta h)] / (1 - 2 eps). Unlike cDPO the flipped term
    is subtracted, so in expectation over the noise it equals the clean DPO loss (it can be negative).
    Paper: Chowdhury, Kini, Natarajan 2024 (Provably Robust DPO, arXiv:2403.00409) §3, the de-biased loss.
    Deviation: none.
    Args:
      policy_chosen_seq_logprobs, policy_rejected_seq_logprobs: (B,) summed completion log-probs, policy.
      ref_chosen_seq_logprobs, ref_rejected_seq_logprobs: (B,) the same under the reference policy.
      beta: KL strength.
      label_smoothing: the flip rate eps in [0, 0.5); 0 is plain DPO.
    Returns:
      losses (B,), chosen_rewards (B,), rejected_rewards (B,) (beta * (policy - ref), detached).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing (the flip rate) must be in [0, 0.5), got {label_smoothing}")
    lr_c, lr_r = _logratios(policy_chosen_seq_logprobs, policy_rejected_seq_logprobs,
                            ref_chosen_seq_logprobs, ref_rejected_seq_logprobs)
    z = beta * (lr_c - lr_r)
    eps = label_smoothing
    # [(1 - eps) * -logs(z) - eps * -logs(-z)] / (1 - 2 eps)
    losses = (-(1.0 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1.0 - 2.0 * eps)
    return losses, *_rewards(lr_c, lr_r, beta)


def ipo_loss(policy_chosen_seq_logprobs: torch.Tensor, policy_rejected_seq_logprobs: torch.Tensor,
             ref_chosen_seq_logprobs: torch.Tensor, ref_rejected_seq_logprobs: torch.Tensor, *,
             beta: float) -> Pairwise:
    """IPO loss (h - 1/(2 beta))^2: regress the log-ratio margin onto a fixed target.

    Paper: Azar, Rowland, Piot, Guo, Calandriello, Valko, Munos 2023 (A General Theoretical Paradigm to
    Understand Learning from Human Preferences, arXiv:2310.12036) Eq. 17, with tau = beta.
    Deviation: none; the function uses whatever log-probs it is given. The paper writes sequence
    log-probs (sums), and the preference recipe passes sums by default. TRL's `ipo` divides each log-ratio by
    its completion length first (a choice it says the IPO authors confirmed); pass mean log-probs (policy and
    reference alike) to get TRL's number. With sums the margin grows with length, so beta must be re-tuned.
    Args:
      policy_chosen_seq_logprobs, policy_rejected_seq_logprobs: (B,) completion log-probs, policy (sums by
        default; means for the length-normalized variant).
      ref_chosen_seq_logprobs, ref_rejected_seq_logprobs: (B,) the same under the reference policy.
      beta: regularization tau; the target margin is 1 / (2 beta).
    Returns:
      losses (B,), chosen_rewards (B,), rejected_rewards (B,) (beta * (policy - ref), detached).
    """
    lr_c, lr_r = _logratios(policy_chosen_seq_logprobs, policy_rejected_seq_logprobs,
                            ref_chosen_seq_logprobs, ref_rejected_seq_logprobs)
    losses = (lr_c - lr_r - 1.0 / (2.0 * beta)) ** 2  # (h - 1/(2 tau))^2
    return losses, *_rewards(lr_c, lr_r, beta)


def hinge_loss(policy_chosen_seq_logprobs: torch.Tensor, policy_rejected_seq_logprobs: torch.Tensor,
               ref_chosen_seq_logprobs: torch.Tensor, ref_rejected_seq_logprobs: torch.Tensor, *,
               beta: float) -> Pairwise:
    """SLiC-style hinge loss max(0, 1 - beta h) on the log-ratio margin.

    Paper: Zhao, Joshi, Liu, Khalman, Saleh, Liu 2023 (SLiC-HF, arXiv:2305.10425) Eq. 1, the rank
    calibration loss max(0, delta - log p(y+) + log p(y-)).
    Deviation: as in RSO (Liu 2023, arXiv:2309.06657) and TRL, the log-probs are taken relative to the
    reference (h instead of raw log-prob differences) and the margin is delta = 1/beta, scaled by beta:
    max(0, 1 - beta h) = beta * max(0, 1/beta - h). SLiC's own SFT regularizer is left to the recipe.
    Args:
      policy_chosen_seq_logprobs, policy_rejected_seq_logprobs: (B,) summed completion log-probs, policy.
      ref_chosen_seq_logprobs, ref_rejected_seq_logprobs: (B,) the same under the reference policy.
      beta: inverse margin.
    Returns:
      losses (B,), chosen_rewards (B,), rejected_rewards (B,) (beta * (policy - ref), detached).
    """
    lr_c, lr_r = _logratios(policy_chosen_seq_logprobs, policy_rejected_seq_logprobs,
                            ref_chosen_seq_logprobs, ref_rejected_seq_logprobs)
    losses = torch.relu(1.0 - beta * (lr_c - lr_r))  # max(0, 1 - beta h)
    return losses, *_rewards(lr_c, lr_r, beta)


def odpo_loss(policy_chosen_seq_logprobs: torch.Tensor, policy_rejected_seq_logprobs: torch.Tensor,
              ref_chosen_seq_logprobs: torch.Tensor, ref_rejected_seq_logprobs: torch.Tensor, *,
              beta: float, offset: torch.Tensor, alpha: float = 1.0) -> Pairwise:
    """DPO with an offset (ODPO): -log s(beta h - Delta), Delta = alpha * log(score_chosen - score_rejected).

    The chosen completion must beat the rejected one by a margin that grows with how much better it scored.
    Paper: Amini, Vieira, Cotterell 2024 (Direct Preference Optimization with an Offset, arXiv:2402.10571)
    §3, the ODPO loss with offset Delta_r = alpha * f(r(y_w) - r(y_l)); we use the paper's default scaling
    f = log (as in the authors' code, rycolab/odpo: `margin = log(chosen - rejected)`, alpha = 1).
    Deviation: none. The offset must be > 0 (a non-positive score gap gives log <= -inf / NaN).
    Args:
      policy_chosen_seq_logprobs, policy_rejected_seq_logprobs: (B,) summed completion log-probs, policy.
      ref_chosen_seq_logprobs, ref_rejected_seq_logprobs: (B,) the same under the reference policy.
      beta: KL strength.
      offset: (B,) score gap score(chosen) - score(rejected) > 0, e.g. from a reward model.
      alpha: scale of the offset; 0 gives plain DPO.
    Returns:
      losses (B,), chosen_rewards (B,), rejected_rewards (B,) (beta * (policy - ref), detached).
    """
    lr_c, lr_r = _logratios(policy_chosen_seq_logprobs, policy_rejected_seq_logprobs,
                            ref_chosen_seq_logprobs, ref_rejected_seq_logprobs)
    delta = alpha * torch.log(offset.to(lr_c.dtype))  # Delta_r = alpha * log(score gap)   (B,)
    losses = -F.logsigmoid(beta * (lr_c - lr_r) - delta)
    return losses, *_rewards(lr_c, lr_r, beta)


def sppo_hard_loss(policy_chosen_seq_logprobs: torch.Tensor, policy_rejected_seq_logprobs: torch.Tensor,
                   ref_chosen_seq_logprobs: torch.Tensor, ref_rejected_seq_logprobs: torch.Tensor, *,
                   beta: float) -> Pairwise:
    """SPPO with hard win probabilities: (lr_c - 1/(2 beta))^2 + (lr_r + 1/(2 beta))^2.

    Paper: Wu, Sun, Yuan, Ji, Yang, Gu 2024 (Self-Play Preference Optimization, arXiv:2405.00675), the
    update of Algorithm 1 (Eq. 4.7): (log pi/pi_t - eta (P(y > pi_t) - 1/2))^2 with eta = 1/beta.
    Deviation: the estimated win probability P is replaced by 1 for the chosen and 0 for the rejected
    completion (TRL's `sppo_hard`), and pi_t is the reference; the soft-P loop belongs to the online recipe.
    Args:
      policy_chosen_seq_logprobs, policy_rejected_seq_logprobs: (B,) summed completion log-probs, policy.
      ref_chosen_seq_logprobs, ref_rejected_seq_logprobs: (B,) the same under the reference (pi_t).
      beta: inverse of the step size eta.
    Returns:
      losses (B,), chosen_rewards (B,), rejected_rewards (B,) (beta * (policy - ref), detached).
    """
    lr_c, lr_r = _logratios(policy_chosen_seq_logprobs, policy_rejected_seq_logprobs,
                            ref_chosen_seq_logprobs, ref_rejected_seq_logprobs)
    target = 1.0 / (2.0 * beta)  # eta * (1 - 1/2) with eta = 1/beta
    losses = (lr_c - target) ** 2 + (lr_r + target) ** 2
    return losses, *_rewards(lr_c, lr_r, beta)


def exo_pair_loss(policy_chosen_seq_logprobs: torch.Tensor, policy_rejected_seq_logprobs: torch.Tensor,
                  ref_chosen_seq_logprobs: torch.Tensor, ref_rejected_seq_logprobs: torch.Tensor, *,
                  beta: float, label_smoothing: float = 1e-3) -> Pairwise:
    """EXO for pairs: KL(p_theta || p_label) between two-way distributions over {chosen, rejected}.

    p_theta = softmax(beta * [lr_c, lr_r]) = [s(beta h), s(-beta h)], p_label = [1 - eps, eps]:
    loss = s(beta h) (logs(beta h) - log(1 - eps)) + s(-beta h) (logs(-beta h) - log eps).
    Paper: Ji, Zhou, Sun, Huang, Ke, Zhou, Zhu, Bian, Huang 2024 (Towards Efficient Exact Optimization of
    Language Model Alignment, arXiv:2402.00856) Eq. 16 (EXO-pref) with K = 2.
    Deviation: none (one beta for both the policy and the label distribution).
    Args:
      policy_chosen_seq_logprobs, policy_rejected_seq_logprobs: (B,) summed completion log-probs, policy.
      ref_chosen_seq_logprobs, ref_rejected_seq_logprobs: (B,) the same under the reference policy.
      beta: KL strength.
      label_smoothing: eps in (0, 1), the label distribution's mass on the rejected completion.
    Returns:
      losses (B,), chosen_rewards (B,), rejected_rewards (B,) (beta * (policy - ref), detached).
    """
    if not 0.0 < label_smoothing < 1.0:
        raise ValueError(f"exo_pair needs label_smoothing in (0, 1), got {label_smoothing}")
    lr_c, lr_r = _logratios(policy_chosen_seq_logprobs, policy_rejected_seq_logprobs,
                            ref_chosen_seq_logprobs, ref_rejected_seq_logprobs)
    z = beta * (lr_c - lr_r)
    log_q_c, log_q_r = F.logsigmoid(z), F.logsigmoid(-z)  # log p_theta(chosen), log p_theta(rejected)
    log_p_c, log_p_r = math.log1p(-label_smoothing), math.log(label_smoothing)  # log p_label
    # KL(q || p) = sum_y q(y) (log q(y) - log p(y))
    losses = log_q_c.exp() * (log_q_c - log_p_c) + log_q_r.exp() * (log_q_r - log_p_r)
    return losses, *_rewards(lr_c, lr_r, beta)


def nca_pair_loss(policy_chosen_seq_logprobs: torch.Tensor, policy_rejected_seq_logprobs: torch.Tensor,
                  ref_chosen_seq_logprobs: torch.Tensor, ref_rejected_seq_logprobs: torch.Tensor, *,
                  beta: float) -> Pairwise:
    """NCA for pairs: -logs(r_c) - 1/2 logs(-r_c) - 1/2 logs(-r_r), r = beta * lr.

    Rewards are scored on an absolute scale (each against 0), not only relative to each other, so the chosen
    likelihood is not pushed down along with the rejected one.
    Paper: Chen, Huang, Zhou, Zhou, Zhu, Bian 2024 (Noise Contrastive Alignment of Language Models with
    Explicit Rewards, arXiv:2402.05369), the NCA loss for pairwise preferences (K = 2).
    Deviation: none.
    Args:
      policy_chosen_seq_logprobs, policy_rejected_seq_logprobs: (B,) summed completion log-probs, policy.
      ref_chosen_seq_logprobs, ref_rejected_seq_logprobs: (B,) the same under the reference policy.
      beta: KL strength.
    Returns:
      losses (B,), chosen_rewards (B,), rejected_rewards (B,) (beta * (policy - ref), detached).
    """
    lr_c, lr_r = _logratios(policy_chosen_seq_logprobs, policy_rejected_seq_logprobs,
                            ref_chosen_seq_logprobs, ref_rejected_seq_logprobs)
    r_c, r_r = beta * lr_c, beta * lr_r
    losses = -F.logsigmoid(r_c) - 0.5 * F.logsigmoid(-r_c) - 0.5 * F.logsigmoid(-r_r)
    return losses, *_rewards(lr_c, lr_r, beta)


def bco_pair_loss(policy_chosen_seq_logprobs: torch.Tensor, policy_rejected_seq_logprobs: torch.Tensor,
                  ref_chosen_seq_logprobs: torch.Tensor, ref_rejected_seq_logprobs: torch.Tensor, *,
                  beta: float, delta: torch.Tensor | float) -> Pairwise:
    """BCO for pairs: a binary classifier on rewards, -logs(r_c - delta) - logs(-(r_r - delta)).

    Paper: Jung, Han, Kim, Lee, Choi 2024 (Binary Classifier Optimization for Large Language Model
    Alignment, arXiv:2404.04656) §3, the BCO loss with reward shift delta = running mean of the rewards.
    Deviation: none. `delta` is state, so the caller keeps it: e.g. an exponential moving average of
    cat(chosen_rewards, rejected_rewards).mean() over steps. TRL 1.16's `bco_pair` has dropped the shift
    (it computes delta = 0).
    Args:
      policy_chosen_seq_logprobs, policy_rejected_seq_logprobs: (B,) summed completion log-probs, policy.
      ref_chosen_seq_logprobs, ref_rejected_seq_logprobs: (B,) the same under the reference policy.
      beta: KL strength.
      delta: 0-dim tensor (or float), the running mean of the implicit rewards; treated as a constant.
    Returns:
      losses (B,), chosen_rewards (B,), rejected_rewards (B,) (beta * (policy - ref), detached).
    """
    lr_c, lr_r = _logratios(policy_chosen_seq_logprobs, policy_rejected_seq_logprobs,
                            ref_chosen_seq_logprobs, ref_rejected_seq_logprobs)
    shift = delta.detach() if isinstance(delta, torch.Tensor) else delta
    r_c, r_r = beta * lr_c - shift, beta * lr_r - shift
    losses = -F.logsigmoid(r_c) - F.logsigmoid(-r_r)
    return losses, *_rewards(lr_c, lr_r, beta)


def aot_loss(policy_chosen_seq_logprobs: torch.Tensor, policy_rejected_seq_logprobs: torch.Tensor,
             ref_chosen_seq_logprobs: torch.Tensor, ref_rejected_seq_logprobs: torch.Tensor, *,
             beta: float, label_smoothing: float = 0.0) -> Pairwise:
    """AOT (paired): the batch's sorted policy margins must dominate the sorted reference margins.

    m = sort_b(policy_c - policy_r), m_ref = sort_b(ref_c - ref_r), z = beta * (m - m_ref); loss_i is the
    (smoothed) logistic loss of the i-th QUANTILE, so losses[i] does not belong to pair i: only the mean over
    the batch has meaning, and it depends on the whole batch (no per-example slicing, no padding rows).
    Paper: Melnyk, Mroueh, Belgodere, Rigotti, Nitsure, Yurochkin, Greenewald, Navratil, Ross 2024
    (Distributional Preference Alignment of LLMs via Optimal Transport, arXiv:2406.05882) §3, paired AOT:
    first-order stochastic dominance as 1-D optimal transport, solved by sorting.
    Deviation: none; label_smoothing is TRL's cDPO-style extension (0 = paper).
    Args:
      policy_chosen_seq_logprobs, policy_rejected_seq_logprobs: (B,) summed completion log-probs, policy.
      ref_chosen_seq_logprobs, ref_rejected_seq_logprobs: (B,) the same under the reference policy.
      beta: KL strength.
      label_smoothing: eps in [0, 0.5).
    Returns:
      losses (B,) per quantile, chosen_rewards (B,), rejected_rewards (B,) (beta * (policy - ref), per pair).
    """
    m, _ = torch.sort(policy_chosen_seq_logprobs - policy_rejected_seq_logprobs, dim=0)  # (B,) ascending
    m_ref, _ = torch.sort(ref_chosen_seq_logprobs - ref_rejected_seq_logprobs, dim=0)
    losses = _smoothed_logistic(beta * (m - m_ref), label_smoothing)
    lr_c, lr_r = _logratios(policy_chosen_seq_logprobs, policy_rejected_seq_logprobs,
                            ref_chosen_seq_logprobs, ref_rejected_seq_logprobs)
    return losses, *_rewards(lr_c, lr_r, beta)


def aot_pair_loss(policy_chosen_seq_logprobs: torch.Tensor, policy_rejected_seq_logprobs: torch.Tensor,
                  ref_chosen_seq_logprobs: torch.Tensor, ref_rejected_seq_logprobs: torch.Tensor, *,
                  beta: float, label_smoothing: float = 0.0) -> Pairwise:
    """AOT (unpaired): the sorted chosen rewards must dominate the sorted rejected rewards, quantile by quantile.

    z = beta * (sort_b(lr_c) - sort_b(lr_r)); chosen and rejected are sorted separately, so it works on
    unpaired data. losses[i] is the loss of the i-th quantile, not of pair i (only the batch mean has meaning).
    Named after TRL's historical `aot_pair`, which TRL 1.x renamed `aot_unpaired`; `aot_loss` is the paired one.
    Paper: Melnyk et al. 2024 (arXiv:2406.05882) §3, unpaired AOT.
    Deviation: none; label_smoothing is TRL's cDPO-style extension (0 = paper).
    Args:
      policy_chosen_seq_logprobs, policy_rejected_seq_logprobs: (B,) summed completion log-probs, policy.
      ref_chosen_seq_logprobs, ref_rejected_seq_logprobs: (B,) the same under the reference policy.
      beta: KL strength.
      label_smoothing: eps in [0, 0.5).
    Returns:
      losses (B,) per quantile, chosen_rewards (B,), rejected_rewards (B,) (beta * (policy - ref), per pair).
    """
    lr_c, lr_r = _logratios(policy_chosen_seq_logprobs, policy_rejected_seq_logprobs,
                            ref_chosen_seq_logprobs, ref_rejected_seq_logprobs)
    lr_c_sorted, _ = torch.sort(lr_c, dim=0)  # (B,) ascending
    lr_r_sorted, _ = torch.sort(lr_r, dim=0)
    losses = _smoothed_logistic(beta * (lr_c_sorted - lr_r_sorted), label_smoothing)
    return losses, *_rewards(lr_c, lr_r, beta)


def apo_zero_loss(policy_chosen_seq_logprobs: torch.Tensor, policy_rejected_seq_logprobs: torch.Tensor,
                  ref_chosen_seq_logprobs: torch.Tensor, ref_rejected_seq_logprobs: torch.Tensor, *,
                  beta: float) -> Pairwise:
    """APO-zero: push the chosen reward up and the rejected reward down, each anchored at 0.

    loss = (1 - s(r_c)) + s(r_r), r = beta * lr. For data whose chosen answers beat the model's own outputs.
    Paper: D'Oosterlinck, Xu, Develder, Demeester, Singh, Potts, Kiela, Mehri 2024 (Anchored Preference
    Optimization and Contrastive Revisions, arXiv:2408.06266) Eq. 7.
    Deviation: the constant 1 makes the loss non-negative (range [0, 2]) as in TRL, whose implementation
    the APO authors wrote; the gradient is the paper's -s(r_c) + s(r_r) exactly.
    Args:
      policy_chosen_seq_logprobs, policy_rejected_seq_logprobs: (B,) summed completion log-probs, policy.
      ref_chosen_seq_logprobs, ref_rejected_seq_logprobs: (B,) the same under the reference policy.
      beta: KL strength.
    Returns:
      losses (B,), chosen_rewards (B,), rejected_rewards (B,) (beta * (policy - ref), detached).
    """
    lr_c, lr_r = _logratios(policy_chosen_seq_logprobs, policy_rejected_seq_logprobs,
                            ref_chosen_seq_logprobs, ref_rejected_seq_logprobs)
    losses = (1.0 - torch.sigmoid(beta * lr_c)) + torch.sigmoid(beta * lr_r)
    return losses, *_rewards(lr_c, lr_r, beta)


def apo_down_loss(policy_chosen_seq_logprobs: torch.Tensor, policy_rejected_seq_logprobs: torch.Tensor,
                  ref_chosen_seq_logprobs: torch.Tensor, ref_rejected_seq_logprobs: torch.Tensor, *,
                  beta: float) -> Pairwise:
    """APO-down: push both rewards down, the rejected one more: s(r_c) + (1 - s(r_c - r_r)).

    For data whose chosen answers are worse than the model's own outputs.
    Paper: D'Oosterlinck et al. 2024 (arXiv:2408.06266) Eq. 8.
    Deviation: the constant 1 makes the loss non-negative (range [0, 2]) as in TRL; the gradient is the
    paper's s(r_c) - s(r_c - r_r) exactly.
    Args:
      policy_chosen_seq_logprobs, policy_rejected_seq_logprobs: (B,) summed completion log-probs, policy.
      ref_chosen_seq_logprobs, ref_rejected_seq_logprobs: (B,) the same under the reference policy.
      beta: KL strength.
    Returns:
      losses (B,), chosen_rewards (B,), rejected_rewards (B,) (beta * (policy - ref), detached).
    """
    lr_c, lr_r = _logratios(policy_chosen_seq_logprobs, policy_rejected_seq_logprobs,
                            ref_chosen_seq_logprobs, ref_rejected_seq_logprobs)
    losses = torch.sigmoid(beta * lr_c) + (1.0 - torch.sigmoid(beta * (lr_c - lr_r)))
    return losses, *_rewards(lr_c, lr_r, beta)


def discopop_loss(policy_chosen_seq_logprobs: torch.Tensor, policy_rejected_seq_logprobs: torch.Tensor,
                  ref_chosen_seq_logprobs: torch.Tensor, ref_rejected_seq_logprobs: torch.Tensor, *,
                  beta: float, tau: float = 0.05) -> Pairwise:
    """DiscoPOP (log-ratio modulated loss): a sigmoid-gated blend of the logistic and exponential losses.

    rho = beta h, w = s(rho / tau): loss = (1 - w) * -logs(rho) + w * exp(-rho).
    Paper: Chris Lu, Holt, Fanconi, Chan, Foerster, van der Schaar, Lange 2024 (Discovering Preference
    Optimization Algorithms with and for Large Language Models, arXiv:2406.08414) §5, LRML, tau = 0.05.
    Deviation: none.
    Args:
      policy_chosen_seq_logprobs, policy_rejected_seq_logprobs: (B,) summed completion log-probs, policy.
      ref_chosen_seq_logprobs, ref_rejected_seq_logprobs: (B,) the same under the reference policy.
      beta: KL strength.
      tau: temperature of the mixing gate.
    Returns:
      losses (B,), chosen_rewards (B,), rejected_rewards (B,) (beta * (policy - ref), detached).
    """
    lr_c, lr_r = _logratios(policy_chosen_seq_logprobs, policy_rejected_seq_logprobs,
                            ref_chosen_seq_logprobs, ref_rejected_seq_logprobs)
    rho = beta * (lr_c - lr_r)
    gate = torch.sigmoid(rho / tau)
    losses = (1.0 - gate) * -F.logsigmoid(rho) + gate * torch.exp(-rho)
    return losses, *_rewards(lr_c, lr_r, beta)
