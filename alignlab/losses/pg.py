"""Policy-gradient losses for online RL (PPO, GRPO family, REINFORCE++): per-token and unreduced; PPO's
entropy bonus and pretraining mix (PPO-ptx) as loss terms.

Every function takes (B, T) per-token tensors lined up with `input_ids` and returns (B, T); none applies the
`response_mask`. The recipe reduces with `aggregate(per_token, response_mask, mode=...)`, which is where GRPO,
DAPO and Dr.GRPO differ. Notation: p = log pi(token) under the policy being trained, q = under another policy
(reference, old, or sampler), ratio = exp(p - p_old).
"""

from __future__ import annotations

import math

import torch

from alignlab.losses.sft import nll_loss

KL_KINDS = ("k1", "k2", "k3")


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, *, kind: str = "k1") -> torch.Tensor:
    """Per-token Monte-Carlo estimate of KL(pi || pi_ref) from tokens sampled from pi.

    With log r = q - p (reference over policy):
      k1 = -log r = p - q                 unbiased, can be negative, high variance;
      k2 = 1/2 (log r)^2                  biased, low variance, >= 0;
      k3 = (r - 1) - log r = exp(q - p) - (q - p) - 1   unbiased, low variance, >= 0 (GRPO's KL loss).
    Paper: Schulman 2020, "Approximating KL Divergence" (blog note, joschu.net/blog/kl-approx.html);
    k3 as a loss: Shao et al. 2024 (GRPO, arXiv:2402.03300) Eq. 4.
    Deviation: for k3 the log-ratio is clamped to [-20, 20] so exp cannot overflow (no effect at sane ratios).
    Args:
      logprobs: (B, T) log-probs of the sampled tokens under the policy (gradients flow through these).
      ref_logprobs: (B, T) log-probs of the same tokens under the reference.
      kind: "k1", "k2" or "k3".
    Returns:
      (B, T) per-token estimate, not masked.
    """
    log_ratio = ref_logprobs - logprobs  # log r = q - p   (B, T)
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "k3":
        log_ratio = log_ratio.clamp(min=-20.0, max=20.0)
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_KINDS}")


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, *,
                        clip_eps: float = 0.2, clip_eps_high: float | None = None,
                        is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate, negated to be minimized: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps_high) * A).

    With ratio == 1 the loss is -A per token. A token is `clipped` when the clipped term is the one chosen
    and it differs from the unclipped one; its gradient is then 0 (A > 0 and ratio > 1 + eps_high, or
    A < 0 and ratio < 1 - eps).
    Paper: Schulman et al. 2017 (PPO, arXiv:1707.06347) Eq. 7; clip-higher (eps_high > eps): Yu et al. 2025
    (DAPO, arXiv:2503.14476) §3.1, Eq. 10; truncated importance weights: Yao et al. 2025, "Your efficient RL
    framework secretly brings you off-policy RL training" (fengyao.notion.site/off-policy-rl).
    Deviation: none.
    Args:
      logprobs: (B, T) log-probs of the sampled tokens under the current policy (gradients flow here).
      old_logprobs: (B, T) the same under the policy that the advantages were computed for (detached).
      advantages: (B, T) per-token advantages, or (B,) per sequence (broadcast over T).
      clip_eps: lower clip range eps: the ratio is kept >= 1 - eps.
      clip_eps_high: upper clip range: the ratio is kept <= 1 + eps_high; None = clip_eps.
      is_weights: (B, T) detached weights that multiply the per-token loss (e.g. `truncated_is_weights`).
    Returns:
      per_token_loss (B, T) and clipped (B, T) bool (for the clip fraction: aggregate(clipped.float(), ...)).
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    if clip_eps < 0 or eps_high < 0:
        raise ValueError(f"clip ranges must be >= 0, got clip_eps={clip_eps}, clip_eps_high={eps_high}")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # (B, 1) broadcast over tokens
    advantages = advantages.detach()
    ratio = torch.exp(logprobs - old_logprobs.detach())  # (B, T)
    unclipped = -ratio * advantages
    clipped_term = -ratio.clamp(1.0 - clip_eps, 1.0 + eps_high) * advantages
    per_token_loss = torch.maximum(unclipped, clipped_term)  # -min(ratio*A, clip(ratio)*A)
    clipped = (clipped_term > unclipped).detach()
    if is_weights is not None:
        per_token_loss = per_token_loss * is_weights.detach()
    return per_token_loss, clipped


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, *,
                       clip_eps: float = 0.2) -> torch.Tensor:
    """PPO2 clipped value loss: 1/2 max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2).

    The value may move at most eps from the rollout-time value unless that makes the loss smaller.
    Paper: Schulman et al. 2017 (PPO) via the OpenAI baselines ppo2 implementation; discussed by
    Engstrom et al. 2020 (arXiv:2005.12729) §3 "value function clipping".
    Deviation: none.
    Args:
      values: (B, T) current critic values (gradients flow here).
      old_values: (B, T) critic values at rollout time.
      returns: (B, T) targets (from `advantages.gae`).
      clip_eps: how far the value may move from `old_values`.
    Returns:
      (B, T) per-token loss.
    """
    old_values, returns = old_values.detach(), returns.detach()
    v_clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)  # (B, T)
    return 0.5 * torch.maximum((values - returns).square(), (v_clipped - returns).square())


def truncated_is_weights(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, *,
                         cap: float = 2.0) -> torch.Tensor:
    """Truncated importance weights min(pi_old / pi_sampler, cap) for a sampler that differs from the trainer.

    The rollout engine (e.g. vLLM, other kernels or precision) samples from pi_sampler, not quite pi_old;
    weighting each token's loss by the truncated ratio corrects the mismatch with bounded variance.
    Paper: Yao, Liu, Zhang, et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
    training" (fengyao.notion.site/off-policy-rl), truncated importance sampling (TIS).
    Deviation: none.
    Args:
      old_logprobs: (B, T) log-probs of the sampled tokens under the trainer's copy of the policy.
      sampler_logprobs: (B, T) log-probs reported by the rollout engine.
      cap: the truncation C > 0.
    Returns:
      (B, T) weights in (0, cap], detached.
    """
    if cap <= 0:
        raise ValueError(f"importance-weight cap must be > 0, got {cap}")
    log_ratio = (old_logprobs - sampler_logprobs).detach()
    return torch.exp(log_ratio.clamp(max=math.log(cap)))  # min(exp(x), cap) without overflow


def approx_kl(logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi_old || pi) on tokens sampled from pi_old: (ratio - 1) - log ratio.

    The PPO "approx_kl" diagnostic (how far one update moved the policy); >= 0, detached.
    Paper: Schulman 2020, "Approximating KL Divergence"; as used in cleanrl's ppo.py.
    Deviation: none.
    Args:
      logprobs: (B, T) current policy; old_logprobs: (B, T) the policy that sampled the tokens.
    Returns:
      (B, T), not masked.
    """
    return kl_estimate(old_logprobs.detach(), logprobs.detach(), kind="k3")


def entropy_loss(entropy: torch.Tensor, *, entropy_coef: float) -> torch.Tensor:
    """Entropy bonus as a loss term to minimize: -c * H_t per token (higher entropy, lower loss).

    Paper: Schulman et al. 2017 (PPO, arXiv:1707.06347) Eq. 9, L = L^CLIP - c1 L^VF + c2 S[pi](s_t) (maximized).
    Deviation: the entropy is that of the next-token distribution at each response token, softmax(logits / T).
    Args: entropy (B, T) per-token entropy with gradient (`compute_logprobs(..., with_entropy=True)`);
      entropy_coef c >= 0.
    Returns: (B, T) per-token loss, not masked.
    """
    return -entropy_coef * entropy


def ptx_loss(logprobs: torch.Tensor, *, ptx_coef: float) -> torch.Tensor:
    """InstructGPT's pretraining mix (PPO-ptx) as a per-token loss: gamma * -log pi(x_t) on pretraining data.

    Paper: Ouyang et al. 2022 (InstructGPT, arXiv:2203.02155) Eq. 2, objective += gamma * E_{x~D_pretrain}
    [log pi_RL(x)]; negated here (a loss), the NLL of `losses.sft.nll_loss` scaled by gamma.
    Deviation: the tokens that count are those the dataset's `response_mask` marks (an SFT-style dataset:
    completions, or every token of plain text), one batch per optimizer update.
    Args: logprobs (B, T) log-probs of the pretraining tokens under the policy (gradients flow here);
      ptx_coef gamma >= 0.
    Returns: (B, T) per-token loss, not masked; reduce with `aggregate(..., mode="token_mean")`.
    """
    return ptx_coef * nll_loss(logprobs)
