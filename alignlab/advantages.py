"""Advantage estimators and reward shaping for online RL: tensors in, tensors out. Imports only torch.

Per-token tensors are (B, T), lined up with `input_ids`; `response_mask` is bool, True = the token counts.
Critic-free estimators take `scores` (B,) with prompt-major rows (rows i*G .. i*G+G-1 share prompt i, B = P*G)
and return a per-sequence advantage that `expand` spreads over the response tokens. Outputs are training
targets and carry no gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _scan(rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, gamma: float,
          gae_lambda: float) -> torch.Tensor:
    # Backward recursion over the counted tokens of each row; uncounted positions (prompt, padding, or a gap
    # inside a ragged response) are skipped, so "the next token" is the next counted one and the value after
    # the last counted token is 0.
    #   delta_t = r_t + gamma * V_next - V_t ;  A_t = delta_t + gamma * lambda * A_next     (B,) per step
    dtype = torch.promote_types(rewards.dtype, torch.float32)
    rewards, values, mask = rewards.to(dtype), values.to(dtype), response_mask.bool()
    advantages = torch.zeros_like(rewards)  # (B, T)
    next_value = torch.zeros_like(rewards[:, 0])  # (B,)
    next_advantage = torch.zeros_like(next_value)
    for t in range(rewards.shape[1] - 1, -1, -1):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * gae_lambda * next_advantage
        advantages[:, t] = torch.where(m, adv, 0.0)
        next_value = torch.where(m, values[:, t], next_value)
        next_advantage = torch.where(m, adv, next_advantage)
    return advantages


def _check_shapes(response_mask: torch.Tensor, **tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t.shape != response_mask.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, response_mask {tuple(response_mask.shape)}")


@torch.no_grad()
def gae(rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, *, gamma: float,
        gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over the response tokens, and the value targets.

    A_t = sum_l (gamma * lambda)^l delta_{t+l},  delta_t = r_t + gamma * V_{t+1} - V_t,  R_t = A_t + V_t.
    lambda = 0 gives the one-step TD error; lambda = 1 gives the Monte-Carlo return minus V_t.
    Paper: Schulman, Moritz, Levine, Jordan, Abbeel 2016 (GAE, arXiv:1506.02438) Eq. 16.
    Deviation: the episode is the counted tokens of a row. The value after its last counted token is 0 (the
    episode ends there) and uncounted positions inside a row are skipped, not treated as steps.
    Args: rewards (B, T) per-token rewards (e.g. from `token_rewards`); values (B, T) critic values V(s_t),
      ignored at uncounted positions; response_mask (B, T) bool, True = the token counts; gamma discount in
      [0, 1]; gae_lambda bias/variance trade-off in [0, 1].
    Returns: advantages (B, T) and returns (B, T), both 0 where the mask is False, detached, at least float32.
    """
    _check_shapes(response_mask, rewards=rewards, values=values)
    advantages = _scan(rewards, values, response_mask, gamma, gae_lambda)
    returns = torch.where(response_mask.bool(), advantages + values.to(advantages.dtype), 0.0)
    return advantages, returns


def _masked_mean_var(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # mean and unbiased variance over the counted entries; variance 0 when fewer than two count
    w = mask.to(x.dtype)
    n = w.sum()
    mean = (x * w).sum() / n.clamp(min=1.0)
    var = (((x - mean) * w) ** 2).sum() / (n - 1.0).clamp(min=1.0)
    return mean, var


def whiten(values: torch.Tensor, response_mask: torch.Tensor | None = None, *, shift_mean: bool = True,
           eps: float = 1e-8, moments: torch.Tensor | None = None) -> torch.Tensor:
    """Normalize to zero mean and unit variance over the counted entries: (x - mean) / sqrt(var + eps).

    With `shift_mean=False` the mean is added back, so only the scale changes.
    Paper: standard practice (e.g. Ziegler 2019, arXiv:1909.08593; Hu 2025 REINFORCE++, arXiv:2501.03262 §3).
    Deviation: none; the variance is the unbiased (n - 1) one.
    Args: values any shape, e.g. (B, T) per token or (B,) per sequence; response_mask bool like `values`, True =
      counts, None = everything counts; shift_mean subtract the mean (True) or keep it (False); eps added to the
      variance; moments (3,) `masked_moments` to take mean and variance from (e.g. summed over processes).
    Returns: Tensor like `values`; 0 where the mask is False.
    """
    mask = torch.ones_like(values, dtype=torch.bool) if response_mask is None else response_mask.bool()
    if mask.shape != values.shape:
        raise ValueError(f"values has shape {tuple(values.shape)}, response_mask {tuple(mask.shape)}")
    if moments is None:
        mean, var = _masked_mean_var(values, mask)
    else:  # n, sum x, sum x^2 -> mean, unbiased variance (0 below two entries)
        n, total, squares = moments.unbind()
        var = (squares - total**2 / n.clamp(min=1)).clamp(min=0) / (n - 1).clamp(min=1)
        mean, var = (total / n.clamp(min=1)).to(values.dtype), var.to(values.dtype)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask, out, 0.0)


def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    if scores.dim() != 1:
        raise ValueError(f"scores must be (B,), got shape {tuple(scores.shape)}")
    if group_size < 1 or scores.shape[0] % group_size:
        raise ValueError(f"batch of {scores.shape[0]} scores does not split into groups of {group_size}")
    return scores.view(-1, group_size)  # (P, G)


def group_advantages(scores: torch.Tensor, group_size: int, *, scale_by_std: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """GRPO outcome advantage: (s_i - mean(group)) / (std(group) + eps); Dr.GRPO without the std.

    Paper: Shao et al. 2024 (DeepSeekMath / GRPO, arXiv:2402.03300) §4.1.2, A_i = (r_i - mean(r)) / std(r);
    Liu et al. 2025 (Dr.GRPO, arXiv:2503.20783) §3.1 drops the std (`scale_by_std=False`).
    Deviation: std is the unbiased (G - 1) one, as in TRL and verl; a group of one gets advantage 0.
    Args: scores (B,) one per completion, prompt-major groups of G = `group_size`; scale_by_std divide by the
      group std (GRPO) or not (Dr.GRPO); eps added to the std so all-equal groups give 0, not NaN.
    Returns: (B,) advantages, detached.
    """
    s = _groups(scores.detach(), group_size)
    centered = s - s.mean(dim=1, keepdim=True)  # (P, G)
    if scale_by_std:
        std = s.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(s[:, :1])
        centered = centered / (std + eps)
    return centered.reshape(-1)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out: s_i minus the mean score of the other G - 1 samples of the same prompt.

    A_i = s_i - 1/(G-1) sum_{j != i} s_j = G/(G-1) * (s_i - mean(group)).
    Paper: Ahmadian et al. 2024 (Back to Basics, arXiv:2402.14740), the RLOO estimator; Kool, van Hoof, Welling
    2019 ("Buy 4 REINFORCE samples, get a baseline for free!").
    Deviation: none.
    Args: scores (B,) in prompt-major groups of G = `group_size` >= 2.
    Returns: (B,) advantages, detached.
    """
    if group_size < 2:
        raise ValueError(f"RLOO needs group_size >= 2 (a leave-one-out baseline), got {group_size}")
    s = _groups(scores.detach(), group_size)
    baseline = (s.sum(dim=1, keepdim=True) - s) / (group_size - 1)  # (P, G)
    return (s - baseline).reshape(-1)


def remax_advantages(scores: torch.Tensor, baseline_scores: torch.Tensor) -> torch.Tensor:
    """ReMax: the sampled completion's score minus the greedy completion's score for the same prompt.

    Paper: Li et al. 2023 (ReMax, arXiv:2310.10505) Algorithm 1, A = r(x, y) - r(x, y_greedy).
    Deviation: none.
    Args: scores (B,) of the sampled completions; baseline_scores (B,) of the greedy completion of each row's
      prompt (already expanded to B).
    Returns: (B,) advantages, detached.
    """
    if scores.shape != baseline_scores.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and baseline_scores {tuple(baseline_scores.shape)} differ")
    return (scores - baseline_scores).detach()


def masked_moments(values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """(3,) float64 (count, sum, sum of squares) of the counted entries: the moments of shards add up to those
    of their concatenation (e.g. `all_reduce(SUM)` over processes), for `whiten(..., moments=)`."""
    w = response_mask.bool().to(torch.float64)
    x = values.detach().to(torch.float64) * w
    return torch.stack([w.sum(), x.sum(), (x * x).sum()])


@torch.no_grad()
def reinforce_pp_advantages(rewards: torch.Tensor, response_mask: torch.Tensor, *, gamma: float = 1.0,
                            reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """REINFORCE++: per-token discounted return of the shaped rewards, whitened over the whole batch.

    G_t = sum_{s >= t} gamma^(s-t) r_s, with r_s the score at the last token minus the per-token KL penalty;
    A_t = (G_t - mean) / std over every counted token of the global batch (no critic, no per-prompt group).
    Paper: Hu 2025 (REINFORCE++, arXiv:2501.03262) §3: the token-level reward and global advantage normalization.
    Deviation: none; with several processes the global batch is the union of their shards (see `reduce`).
    Args: rewards (B, T) per-token rewards (`token_rewards` with the KL in it); response_mask (B, T) bool;
      gamma the discount; reduce None (this batch is the whole batch) or a sum over processes of a tensor (the
      recipe's all-reduce), applied to the `masked_moments` of the returns so mean/std are global.
    Returns: (B, T) advantages, 0 where the mask is False, detached.
    """
    _check_shapes(response_mask, rewards=rewards)
    returns = _scan(rewards, torch.zeros_like(rewards), response_mask, gamma, 1.0)
    moments = None if reduce is None else reduce(masked_moments(returns, response_mask))  # (3,) global
    return whiten(returns, response_mask, moments=moments)


def token_rewards(scores: torch.Tensor, response_mask: torch.Tensor, *, kl: torch.Tensor | None = None,
                  kl_coef: float = 0.0) -> torch.Tensor:
    """Per-token rewards: the sequence score at each row's last counted token, minus kl_coef * KL per token.

    r_t = -kl_coef * kl_t + [t = last] * score ("KL in the reward").
    Paper: Ziegler et al. 2019 (arXiv:1909.08593) Eq. 2; Ouyang et al. 2022 (InstructGPT, arXiv:2203.02155)
    Eq. 2; Stiennon et al. 2020 (arXiv:2009.01325) Eq. 2.
    Deviation: the penalty is per token (the sum over tokens is the sequence KL), as in their code.
    Args: scores (B,) one per sequence; response_mask (B, T) bool (a row with no counted token gets no
      reward); kl (B, T) per-token KL estimate (e.g. `losses.pg.kl_estimate`) or None; kl_coef the weight beta.
    Returns: (B, T) rewards, 0 where the mask is False.
    """
    mask = response_mask.bool()
    if scores.shape != mask.shape[:1]:
        raise ValueError(f"scores {tuple(scores.shape)} must be (B,) for response_mask {tuple(mask.shape)}")
    dtype = torch.promote_types(scores.dtype, torch.float32)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, -1).max(dim=1).values  # (B,), -1 = empty row
    rewards = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    if kl is not None:
        _check_shapes(mask, kl=kl)
        rewards = torch.where(mask, -kl_coef * kl.to(dtype), 0.0)
    at_last = positions == last.unsqueeze(1)  # (B, T)
    return rewards + torch.where(at_last, scores.to(dtype).unsqueeze(1), 0.0)


def expand(seq_values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Spread a per-sequence value (B,) over the counted tokens (B, T); 0 elsewhere."""
    if seq_values.shape != response_mask.shape[:1]:
        raise ValueError(f"seq_values {tuple(seq_values.shape)} must be (B,) for mask {tuple(response_mask.shape)}")
    return torch.where(response_mask.bool(), seq_values.unsqueeze(1), 0.0)


def zero_variance_groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """DAPO dynamic sampling: True for each row whose prompt group has all-equal scores (zero advantage).

    Paper: Yu et al. 2025 (DAPO, arXiv:2503.14476) §3.2, the constraint 0 < |{o_i correct}| < G.
    Deviation: tests exact equality of scores (any reward, not only 0/1 accuracy).
    Args: scores (B,) in prompt-major groups of G = `group_size`.
    Returns: (B,) bool, True = drop this row.
    """
    s = _groups(scores, group_size)
    flat = s.max(dim=1).values == s.min(dim=1).values  # (P,)
    return flat.repeat_interleave(group_size)


def overlong_penalty(lengths: torch.Tensor, *, max_length: int, buffer: int) -> torch.Tensor:
    """DAPO soft overlong punishment: 0 up to max_length - buffer, then linear down to -1 at max_length.

    R(L) = 0 if L <= Lmax - Lbuf; ((Lmax - Lbuf) - L) / Lbuf if Lmax - Lbuf < L <= Lmax; -1 if L > Lmax.
    Paper: Yu et al. 2025 (DAPO, arXiv:2503.14476) §3.4, R_length with Lmax and Lcache = buffer.
    Deviation: none.
    Args: lengths (B,) response lengths in tokens; max_length Lmax, the generation budget; buffer Lbuf, the
      punishment interval, 0 < buffer <= max_length.
    Returns: (B,) float penalties in [-1, 0], which the recipe adds to the scores.
    """
    if not 0 < buffer <= max_length:
        raise ValueError(f"overlong buffer must be in (0, max_length={max_length}], got {buffer}")
    free = max_length - buffer
    return ((free - lengths.float()) / buffer).clamp(min=-1.0, max=0.0)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[R - V] / Var[R] over the counted tokens: 1 = perfect critic, 0 = no better than a constant.

    NaN when the returns have zero variance. A diagnostic; detached.
    Args: values (B, T) critic values; returns (B, T) targets; response_mask (B, T) bool.
    Returns: a 0-dim tensor.
    """
    _check_shapes(response_mask, values=values, returns=returns)
    mask = response_mask.bool()
    values, returns = values.detach().float(), returns.detach().float()
    _, var_returns = _masked_mean_var(returns, mask)
    _, var_residual = _masked_mean_var(returns - values, mask)
    return 1.0 - var_residual / var_returns


class _KLControllerState:
    def state_dict(self) -> dict[str, float]:
        """The controller's numbers, for a checkpoint."""
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, float]) -> None:
        for key, current in vars(self).items():
            setattr(self, key, type(current)(state[key]))


class FixedKLController(_KLControllerState):
    """A constant KL coefficient with the same interface as `AdaptiveKLController`."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Does nothing: the coefficient is fixed."""


class AdaptiveKLController(_KLControllerState):
    """Proportional controller that steers the KL coefficient so the measured KL approaches a target.

    e = clip((KL - target) / target, -0.2, 0.2);  beta <- beta * (1 + e * n_steps / horizon).
    KL above target raises beta, below lowers it, by at most a factor 1 +- 0.2 * n_steps / horizon per update.
    Paper: Ziegler et al. 2019 (arXiv:1909.08593) §2.2, beta_{t+1} = beta_t (1 + K_beta e_t).
    Deviation: K_beta = n_steps / horizon (the authors' code, lm-human-preferences), so the rate does not
    depend on how many samples one update covers.
    Args: init_kl_coef > 0, the starting beta; target > 0, the KL target in the units of `current_kl` (e.g.
      nats per sequence); horizon > 0, the number of samples over which a full error corrects.
    """

    def __init__(self, init_kl_coef: float, *, target: float, horizon: int):
        if init_kl_coef <= 0 or target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs init_kl_coef, target, horizon > 0; got {init_kl_coef}, {target}, "
                             f"{horizon}")
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move `value` after an update that covered `n_steps` samples with measured KL `current_kl`."""
        error = min(max((float(current_kl) - self.target) / self.target, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
