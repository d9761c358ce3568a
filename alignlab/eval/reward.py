"""Reward-model metrics on score tensors: accuracy, per-category sections, calibration, ensembles, acc@k.

Every function takes scores that a reward model already produced (no model I/O here, except that
`reliability_diagram` writes a PNG):

    acc = pairwise_accuracy(chosen, rejected)                       # (P,) scores of each pair's two sides
    by_cat = accuracy_by_category(chosen, rejected, categories)     # {"chat": {"accuracy", "count"}, ...}
    overall = section_score(by_cat, {"Chat": ["chat"], ...})        # RewardBench-style weighted mean
    ece = expected_calibration_error(torch.sigmoid(chosen - rejected), torch.ones(P))
    acc_at_k(scores, gold, k)                                       # Askell 2021, exact, no sampling

Conventions: a tie (chosen == rejected) counts as half right, as a coin flip would; probabilities are
P(chosen preferred) = sigmoid(chosen - rejected) under the Bradley-Terry model the RM was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from alignlab.eval.best_of_n import best_of_k_weights


def pairwise_accuracy(chosen: Tensor, rejected: Tensor) -> float:
    """Share of pairs whose chosen side scores higher (ties count 1/2).

    Args:
      chosen, rejected: (P,) scores.
    """
    chosen, rejected = chosen.float().reshape(-1), rejected.float().reshape(-1)
    if chosen.numel() == 0:
        return float("nan")
    wins = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
    return float(wins.mean())


def accuracy_by_category(chosen: Tensor, rejected: Tensor, categories: Sequence) -> dict[str, dict]:
    """Pairwise accuracy per category: {category: {"accuracy": float, "count": int}} (sorted by name).

    Args:
      chosen, rejected: (P,) scores; categories: P labels (any values; turned into strings).
    """
    if len(categories) != chosen.numel():
        raise ValueError(f"{len(categories)} categories for {chosen.numel()} pairs")
    out: dict[str, dict] = {}
    for name in sorted({str(c) for c in categories}):
        idx = torch.tensor([i for i, c in enumerate(categories) if str(c) == name], dtype=torch.long)
        out[name] = {"accuracy": pairwise_accuracy(chosen[idx], rejected[idx]), "count": len(idx)}
    return out


def section_score(by_category: dict[str, dict], sections: dict[str, list[str]] | None = None) -> dict:
    """RewardBench-style summary: each section's accuracy is the example-weighted mean of its categories'
    accuracies; the overall score is the unweighted mean of the section scores.

    Paper: Lambert et al. 2024, RewardBench (arXiv:2403.13787) §4: sections Chat, Chat Hard, Safety,
    Reasoning; a section averages its subsets weighted by their number of prompts.
    Deviation: RewardBench up-weights the HumanEvalPack code subsets inside Reasoning; here every example
    of a section weighs the same. With `sections=None` every category is its own section.
    Returns:
      {"sections": {name: accuracy}, "score": mean of the section accuracies}.
    """
    sections = sections or {name: [name] for name in by_category}
    scores = {}
    for name, members in sections.items():
        present = [by_category[m] for m in members if m in by_category and by_category[m]["count"] > 0]
        total = sum(p["count"] for p in present)
        if total:
            scores[name] = sum(p["accuracy"] * p["count"] for p in present) / total
    mean = sum(scores.values()) / len(scores) if scores else float("nan")
    return {"sections": scores, "score": mean}


def preference_probabilities(chosen: Tensor, rejected: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetrized (probs, outcomes) for calibration: each pair contributes (p, 1) and (1 - p, 0), with
    p = sigmoid(chosen - rejected), as if it had been shown in both orders. Returns two (2P,) tensors."""
    p = torch.sigmoid(chosen.float().reshape(-1) - rejected.float().reshape(-1))
    return torch.cat([p, 1 - p]), torch.cat([torch.ones_like(p), torch.zeros_like(p)])


def _bins(probs: Tensor, n_bins: int) -> Tensor:
    """Bin index of each probability: n_bins equal-width bins on [0, 1] (1.0 goes in the last)."""
    return (probs.float().clamp(0, 1) * n_bins).long().clamp(max=n_bins - 1)


def calibration_table(probs: Tensor, outcomes: Tensor, n_bins: int = 10) -> list[dict]:
    """Per bin: {"lo", "hi", "count", "confidence" (mean prob), "frequency" (mean outcome)}."""
    probs, outcomes = probs.float().reshape(-1), outcomes.float().reshape(-1)
    index = _bins(probs, n_bins)
    rows = []
    for b in range(n_bins):
        sel = index == b
        n = int(sel.sum())
        rows.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "count": n,
                     "confidence": float(probs[sel].mean()) if n else float("nan"),
                     "frequency": float(outcomes[sel].mean()) if n else float("nan")})
    return rows


def expected_calibration_error(probs: Tensor, outcomes: Tensor, n_bins: int = 10) -> float:
    """ECE = sum_b (n_b / n) |mean(p in b) - mean(y in b)| over equal-width bins.

    Paper: Naeini et al. 2015 (AAAI), "Obtaining well calibrated probabilities using Bayesian binning";
    used for preference models by Bai et al. 2022 (arXiv:2204.05862) §3.
    Args:
      probs: (N,) predicted probabilities; outcomes: (N,) 0/1 (or in [0, 1]) observed outcomes.
    """
    n = probs.numel()
    if n == 0:
        return float("nan")
    table = calibration_table(probs, outcomes, n_bins)
    return sum(r["count"] / n * abs(r["confidence"] - r["frequency"]) for r in table if r["count"])


def reliability_diagram(probs: Tensor, outcomes: Tensor, path: str | Path, *, n_bins: int = 10,
                        title: str = "Reward model calibration") -> Path:
    """Write a reliability diagram (observed frequency vs predicted probability, with bin counts) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = [r for r in calibration_table(probs, outcomes, n_bins) if r["count"]]
    ece = expected_calibration_error(probs, outcomes, n_bins)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", c="gray", lw=1, label="perfect calibration")
    ax.bar([(r["lo"] + r["hi"]) / 2 for r in table], [r["frequency"] for r in table], width=1 / n_bins,
           alpha=0.35, edgecolor="k", label="observed frequency")
    ax.plot([r["confidence"] for r in table], [r["frequency"] for r in table], "o-", c="C3",
            label="bin mean")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted P(chosen preferred)", ylabel="frequency",
           title=f"{title}\nECE {ece:.3f} over {probs.numel()} predictions")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def ensemble_agreement(member_chosen: Tensor, member_rejected: Tensor) -> dict:
    """How much the N members of an ensemble agree on each pair.

    Args:
      member_chosen, member_rejected: (P, N) scores of each pair's sides by each member.
    Returns:
      {"unanimous": share of pairs on which every member prefers the same side,
       "pairwise_agreement": mean over member pairs of the share of pairs on which the two agree,
       "member_accuracy": [accuracy of each member], "margin_std": mean over pairs of the std of the
       members' margins (the disagreement signal of Christiano et al. 2017 §2.2.4)}.
    """
    margins = member_chosen.float() - member_rejected.float()  # (P, N)
    n = margins.shape[1]
    sign = torch.sign(margins)
    unanimous = float(((sign == sign[:, :1]).all(dim=1)).float().mean())
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    agree = [float((sign[:, i] == sign[:, j]).float().mean()) for i, j in pairs]
    return {"unanimous": unanimous, "pairwise_agreement": sum(agree) / len(agree) if agree else 1.0,
            "member_accuracy": [pairwise_accuracy(member_chosen[:, i], member_rejected[:, i]) for i in range(n)],
            "margin_std": float(margins.std(dim=1).mean()) if n > 1 else 0.0}


def _expected_pick(scores: Tensor, gold: Tensor, k: int) -> Tensor:
    """(P,) expected gold of the highest-scored of k items drawn without replacement from each row.
    Ties in `scores` are broken uniformly at random: tied items share their group's mean gold."""
    p, n = scores.shape
    w = best_of_k_weights(n, k).flip(0)  # top-ranked first: C(n - 1 - i, k - 1) / C(n, k)
    out = torch.empty(p, dtype=torch.float64)
    for r in range(p):
        s, g = scores[r].double(), gold[r].double()
        order = torch.argsort(s, descending=True, stable=True)
        s, g = s[order], g[order]
        _, inverse, counts = torch.unique_consecutive(s, return_inverse=True, return_counts=True)
        group_mean = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, g) / counts
        out[r] = (w * group_mean[inverse]).sum()
    return out


def acc_at_k(scores: Tensor, gold: Tensor, k: int) -> float:
    """Best-of-k with the reward model as the picker: the expected gold value of the sample the RM scores
    highest among k samples drawn at random (without replacement) from N >= k scored samples per prompt,
    averaged over prompts. With 0/1 gold (correct or not) it is the probability that the pick is correct.

    Paper: Askell et al. 2021 (arXiv:2112.00861) §4 and App. (the PM "chooses the best of k samples");
    the unbiased estimator follows pass@k of Chen et al. 2021 (arXiv:2107.03374): sort the N samples by
    RM score; the i-th best (0-based) is the pick of a random k-subset with probability
    C(N-1-i, k-1) / C(N, k), so  acc@k = sum_i C(N-1-i, k-1) / C(N, k) * gold_(i)  exactly, with no
    sampling. Ties in score are broken uniformly at random.
    Deviation: none. To get "probability the pick is the gold-best of the k", pass gold as 0/1 is-best
    indicators only when the gold-best is unique across all k-subsets (e.g. k = N).
    Args:
      scores: (P, N) reward-model scores; gold: (P, N) gold quality of the same samples; 1 <= k <= N.
    """
    if scores.shape != gold.shape or scores.dim() != 2:
        raise ValueError(f"scores and gold must both be (P, N), got {tuple(scores.shape)}, {tuple(gold.shape)}")
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be in [1, N={scores.shape[1]}], got {k}")
    return float(_expected_pick(scores, gold, k).mean())


def best_of_n_curve(scores: Tensor, gold: Tensor, ks: Sequence[int] | None = None) -> dict:
    """acc@k for k in `ks` (default 1..N) for the reward model, for an oracle picker (scores = gold) and
    the mean gold of a random pick (= acc@1): {"k": [...], "rm": [...], "oracle": [...], "random": float}."""
    ks = list(ks or range(1, scores.shape[1] + 1))
    return {"k": ks, "rm": [acc_at_k(scores, gold, k) for k in ks],
            "oracle": [acc_at_k(gold, gold, k) for k in ks], "random": float(gold.double().mean())}


def score_stats(scores: Tensor) -> dict:
    """Mean and std of a set of scores (all heads pooled)."""
    flat = scores.float().reshape(-1)
    return {"mean": float(flat.mean()), "std": float(flat.std()) if flat.numel() > 1 else 0.0}
