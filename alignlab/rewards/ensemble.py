"""Combine the scores of an ensemble of reward models (or of N heads on one backbone) into one score.

    scores = reward_scores(model, batch)               # (B, N): N members, `config.alignlab_ensemble = N`
    combined = combine(scores, mode="mean_minus_std", lam=1.0)   # (B,) conservative reward
    uncertainty = disagreement(scores)                 # (B,) e.g. to pick which pairs to label next

Imports only torch.
"""

from __future__ import annotations

import torch

MODES = ("mean", "min", "mean_minus_std")


def combine(scores: torch.Tensor, *, mode: str, lam: float = 1.0) -> torch.Tensor:
    """One score per example from N ensemble members: their mean, their minimum, or mean - lam * std.

      mean:            (1/N) sum_n s_n                       (Christiano 2017; Coste 2023 "mean")
      min:             min_n s_n                             (Coste 2023 worst-case optimization, WCO)
      mean_minus_std:  mean_n s_n - lam * std_n s_n          (Coste 2023 uncertainty-weighted, UWO)
    Paper: Christiano et al. 2017 (Deep RL from Human Preferences, arXiv:1706.03741) §2.2.3; Coste et al.
    2023 (Reward Model Ensembles Help Mitigate Overoptimization, arXiv:2310.02743), mean/WCO/UWO.
    Deviation: Christiano's members are each normalized before averaging (normalize them first:
    `alignlab.models.reward.normalize_scores`); Coste's UWO subtracts lam * variance, here lam * std (same
    units as the scores, so lam does not depend on the reward scale); std is the population std (/N).
    Args:
      scores: (B, N) score of each example under each member; members must be on a common scale.
      mode: one of MODES.
      lam: weight of the std penalty in `mean_minus_std` (>= 0; 0 gives the mean).
    Returns:
      (B,) combined scores.
    """
    if mode == "mean":
        return scores.mean(-1)
    if mode == "min":
        return scores.min(-1).values
    if mode == "mean_minus_std":
        return scores.mean(-1) - lam * disagreement(scores)
    raise ValueError(f"unknown ensemble mode {mode!r}; expected one of {MODES}")


def disagreement(scores: torch.Tensor) -> torch.Tensor:
    """Disagreement of the members: the (population) standard deviation of the N scores of each example.

    Paper: Christiano et al. 2017 (arXiv:1706.03741) §2.2.4: query the pairs with the highest variance of
    the ensemble members' predictions.
    Deviation: Christiano measures the variance of the predicted preference probability of a pair; this is
    the spread of the per-example scores (apply it to s_a - s_b of a pair for the paper's quantity).
    Args:
      scores: (B, N).
    Returns:
      (B,) std over the members (0 for N = 1).
    """
    return scores.std(-1, correction=0)
