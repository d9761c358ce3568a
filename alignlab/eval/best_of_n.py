"""Best-of-n: selection, its analytic KL, and an unbiased best-of-k curve from one set of samples.

    best = select_best(scores, n)                     # (P,) row of each prompt's best sample (ties -> first)
    bon_kl(16)                                        # 1.835 nats: KL(best-of-16 || policy)
    curve = best_of_k_curve(scores.view(P, n))        # {1: mean, 2: E[max of 2], 4: ..., n: mean of maxima}
    curve = best_of_k_curve(proxy.view(P, n), gold.view(P, n))   # gold reward of the proxy's choice

Pure torch; no models, config or I/O.
"""

from __future__ import annotations

import math

import torch


def bon_kl(n: int) -> float:
    """Analytic KL(pi_bon || pi) of best-of-n sampling from pi: log n - (n - 1) / n nats.

    Paper: Gao, Schulman & Hilton 2022, "Scaling Laws for Reward Model Overoptimization", arXiv 2210.10760,
    §2 (KL_bon = log n - (n-1)/n), from Stiennon et al. 2020, arXiv 2009.01325 (appendix on best-of-N).
    Deviation: none in the formula. It is exact when the n samples are almost surely distinct with distinct
    scores (a continuous output space); with repeated outputs it is an upper bound on the true KL (Beirami et
    al. 2024, arXiv 2401.01879, Thm. 1).
    Args:
      n: samples per prompt, n >= 1.
    Returns:
      KL in nats (0 for n = 1).
    """
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def select_best(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Index (into the flat prompt-major rows) of each prompt's highest-scoring sample; ties go to the first.

    Args:
      scores: (P*n,) one score per sample, rows i*n .. i*n+n-1 belonging to prompt i.
      n: samples per prompt.
    Returns:
      (P,) long indices into `scores`.
    """
    if scores.dim() != 1 or scores.shape[0] % n:
        raise ValueError(f"scores must be 1-D with a multiple of n={n} entries, got shape {tuple(scores.shape)}")
    grouped = scores.view(-1, n)  # (P, n)
    best = grouped.argmax(dim=1)  # torch.argmax returns the first maximal index
    return torch.arange(grouped.shape[0], device=scores.device) * n + best


def best_of_k_weights(num_samples: int, k: int, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """P(the i-th smallest of N samples is the maximum of a uniformly random k-subset), i = 1..N.

    w_i = C(i-1, k-1) / C(N, k): the subset must hold sample i and k-1 of the i-1 samples below it. The
    weights sum to 1 and are 0 for i < k. Computed through log-gamma so large N does not overflow.
    Returns:
      (N,) weights, ascending order statistics.
    """
    if not 1 <= k <= num_samples:
        raise ValueError(f"best-of-k needs 1 <= k <= N, got k={k}, N={num_samples}")
    i = torch.arange(1, num_samples + 1, dtype=dtype)
    lgamma = torch.lgamma
    log_choose = (lgamma(i) - lgamma(torch.tensor(k, dtype=dtype)) - lgamma((i - k + 1).clamp(min=1)))
    log_total = math.lgamma(num_samples + 1) - math.lgamma(k + 1) - math.lgamma(num_samples - k + 1)
    weights = torch.exp(log_choose - log_total)
    return torch.where(i >= k, weights, torch.zeros_like(weights))


def expected_best_of_k(scores: torch.Tensor, k: int, values: torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased estimate, from N >= k samples per prompt, of the expected `values` of best-of-k by `scores`.

    E[value of argmax_{j in S} score_j] over uniformly random k-subsets S of the N samples
      = sum_i w_i * value_(i),   w_i = C(i-1, k-1) / C(N, k),
    with samples ordered by ascending score. Without `values` this is E[max of k scores]. Ties in `scores`
    break toward the lower index, as in `select_best`, so the estimate equals the exact subset average.

    Paper: the order-statistics estimator of best-of-n used by Nakano et al. 2021 (WebGPT, arXiv 2112.09332)
    and Gao et al. 2022 (arXiv 2210.10760, §2): one set of N samples gives the whole best-of-k curve.
    Deviation: none.
    Args:
      scores: (P, N) selection scores (e.g. a proxy reward model).
      k: subset size, 1 <= k <= N.
      values: (P, N) what to average for the chosen sample (e.g. the gold reward); default `scores`.
    Returns:
      (P,) per-prompt estimate, in `values`' dtype (float32 for integer input).
    """
    values = scores if values is None else values
    if scores.dim() != 2 or values.shape != scores.shape:
        raise ValueError(f"scores and values must be (P, N) of one shape, got {tuple(scores.shape)} and "
                         f"{tuple(values.shape)}")
    num_samples = scores.shape[1]
    # Reverse, then stable ascending sort: among tied scores the lower original index ranks higher.
    flipped = scores.flip(1)
    order = torch.sort(flipped, dim=1, stable=True).indices  # (P, N) positions in `flipped`
    ranked = values.flip(1).gather(1, order).double()  # (P, N) values by ascending score
    weights = best_of_k_weights(num_samples, k).to(ranked.device)  # (N,)
    out = (ranked * weights).sum(dim=1)
    return out.to(values.dtype if values.is_floating_point() else torch.float32)


def powers_of_two(n: int) -> list[int]:
    """1, 2, 4, ... up to n, with n itself always last."""
    ks = [1 << e for e in range(n.bit_length()) if 1 << e < n]
    return ks + [n]


def best_of_k_curve(scores: torch.Tensor, values: torch.Tensor | None = None,
                    ks: list[int] | None = None) -> dict[int, torch.Tensor]:
    """Mean over prompts of `expected_best_of_k` for each k (default 1, 2, 4, ..., N).

    Args:
      scores: (P, N) selection scores; values: (P, N) optional values to report (default `scores`).
    Returns:
      {k: 0-d tensor}, ascending k.
    """
    ks = powers_of_two(scores.shape[1]) if ks is None else sorted(ks)
    return {k: expected_best_of_k(scores, k, values).mean() for k in ks}
