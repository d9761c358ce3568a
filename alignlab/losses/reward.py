"""Reward-model objectives: pairwise (Bradley-Terry), K-wise ranking, binary discrimination, centering,
attribute regression, gated multi-objective preference (ArmoRM) and process (per-step) rewards.

Every function takes scores already computed by a reward model (`alignlab.models.reward.reward_scores`) and
returns an UNREDUCED loss per example (or per step); the recipe reduces it (`.mean()`). softplus(-d) is
used for -log sigmoid(d): the same value, stable for large |d|.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, *,
                       margin: torch.Tensor | None = None,
                       label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise Bradley-Terry loss -log sigmoid(s_c - s_r - m) of a reward model, with optional margin.

    Paper: Ouyang et al. 2022 (InstructGPT, arXiv:2203.02155) Eq. 1 for one pair; Bai et al. 2022 (HH-RLHF,
    arXiv:2204.05862); the margin m(r) from the annotators' rating gap is Touvron et al. 2023 (Llama 2,
    arXiv:2307.09288) Eq. 2.
    Deviation: optional label smoothing eps (not in these papers): the pair's label is flipped with
    probability eps, loss = (1 - eps) * -log sigmoid(d) + eps * -log sigmoid(-d), d = s_c - s_r - m (the
    "conservative" form of cDPO, Mitchell 2023). eps = 0 is the plain loss.
    Args:
      chosen_scores: (B,) scores of the preferred completions.
      rejected_scores: (B,) scores of the dispreferred completions.
      margin: (B,) or None; the chosen score must beat the rejected one by this much (0 when None).
      label_smoothing: eps in [0, 0.5).
    Returns:
      losses (B,); correct (B,) bool, detached: s_c > s_r strictly (a tie is not correct; margin ignored).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    d = chosen_scores - rejected_scores  # (B,)
    if margin is not None:
        d = d - margin
    losses = F.softplus(-d)  # -log sigmoid(d)
    if label_smoothing > 0:
        losses = (1.0 - label_smoothing) * losses + label_smoothing * F.softplus(d)
    correct = (chosen_scores > rejected_scores).detach()
    return losses, correct


def kwise_ranking_loss(scores: torch.Tensor, ranks: torch.Tensor, *, valid: torch.Tensor) -> torch.Tensor:
    """InstructGPT's K-wise ranking loss: mean over the valid ordered pairs of -log sigmoid(s_i - s_j).

    Each of the K completions of a prompt is scored once (by the caller); all C(K, 2) comparisons of the
    prompt then form one example, so the prompt counts once however many pairs it yields:
      loss_b = 1/|P_b| * sum_{(i, j) in P_b} -log sigmoid(s_bi - s_bj),
      P_b = {(i, j): valid_bi, valid_bj, rank_bi < rank_bj}   (i ranked better than j).
    Paper: Ouyang et al. 2022 (InstructGPT, arXiv:2203.02155) Eq. 1.
    Deviation: ties (equal ranks) and invalid (padding) completions form no pair, so the normalizer is the
    number of pairs actually compared rather than C(K, 2); a row with no pair has loss 0.
    Args:
      scores: (B, K) scores.
      ranks: (B, K) long, 0 = best; equal ranks are ties.
      valid: (B, K) bool, False for padding entries of rows with fewer than K completions.
    Returns:
      (B,) loss per prompt.
    """
    diff = scores[:, :, None] - scores[:, None, :]  # (B, K, K): s_i - s_j
    better = ranks[:, :, None] < ranks[:, None, :]  # (B, K, K): i ranked above j
    pairs = better & valid[:, :, None] & valid[:, None, :]  # (B, K, K)
    per_pair = torch.where(pairs, F.softplus(-diff), 0.0)  # -log sigmoid(s_i - s_j)
    return per_pair.sum((1, 2)) / pairs.sum((1, 2)).clamp(min=1)


def binary_discrimination_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary discrimination: a logistic (BCE-with-logits) loss on one score, label True = "good".

    -[y log sigmoid(s) + (1 - y) log(1 - sigmoid(s))], i.e. softplus(-s) for good and softplus(s) for bad.
    Askell et al. 2021 compare three ways of learning from preference data: imitation learning (the LM
    NLL of the chosen completion: `alignlab.losses.sft.nll_loss` reduced over the chosen tokens), binary
    discrimination (this function, each completion labelled on its own), and ranked preference modeling
    (`bradley_terry_loss`).
    Paper: Askell et al. 2021 (A General Language Assistant, arXiv:2112.00861) §4.
    Deviation: none.
    Args:
      scores: (B,) logits.
      labels: (B,) bool, True = acceptable / correct completion.
    Returns:
      (B,) loss.
    """
    return F.binary_cross_entropy_with_logits(scores, labels.to(scores.dtype), reduction="none")


def reward_centering_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, *,
                          coef: float) -> torch.Tensor:
    """Auxiliary centering loss coef * (s_c + s_r)^2 that pins the reward scale's offset near 0.

    The Bradley-Terry loss depends only on s_c - s_r, so the offset of the scores is free; this term makes
    the rewards of each pair sum to zero on average (added to the BT loss).
    Paper: Eisenstein et al. 2023 (Helping or Herding?, arXiv:2312.09244), the centering
    auxiliary loss.
    Deviation: none.
    Args:
      chosen_scores: (B,) scores of the chosen completions.
      rejected_scores: (B,) scores of the rejected completions.
      coef: eta >= 0, the weight of the term.
    Returns:
      (B,) loss.
    """
    return coef * (chosen_scores + rejected_scores).square()


def attribute_regression_loss(pred: torch.Tensor, target: torch.Tensor, *, valid: torch.Tensor) -> torch.Tensor:
    """Masked mean squared error over K attribute scores (multi-objective regression reward model).

    loss_b = sum_k valid_bk (pred_bk - target_bk)^2 / sum_k valid_bk; a row with no valid attribute has
    loss 0. Invalid targets may be NaN: they never reach the value or the gradient.
    Paper: Wang et al. 2024 (HelpSteer2, arXiv:2406.08673), regression on 5 attributes; Wang et al. 2024
    (ArmoRM, arXiv:2406.12845), stage 1 (multi-objective regression).
    Deviation: ArmoRM fits stage 1 by ridge regression on frozen embeddings; this is the plain MSE for a
    trained head (add weight decay for the ridge term).
    Args:
      pred: (B, K) predicted attribute scores.
      target: (B, K) rated attribute scores.
      valid: (B, K) bool, True = this attribute is rated for this example.
    Returns:
      (B,) loss.
    """
    target = torch.where(valid, target, pred.detach())  # missing ratings: zero error, NaN-safe gradient
    sq = (pred - target).square()  # (B, K)
    return (sq * valid).sum(-1) / valid.sum(-1).clamp(min=1)


def gated_scores(weights: torch.Tensor, attribute_scores: torch.Tensor) -> torch.Tensor:
    """Mixture-of-experts score of ArmoRM: R = sum_k w_k r_k with prompt-dependent gate weights w.

    Paper: Wang et al. 2024 (ArmoRM, arXiv:2406.12845), stage 2 (mixture-of-experts gating).
    Deviation: no reward-transformation matrix and no verbosity decorrelation of the attribute scores
    (apply them to `attribute_scores` before calling, if wanted).
    Args:
      weights: (B, K) gate outputs, rows on the simplex (softmax of the gating network).
      attribute_scores: (B, K) per-objective rewards r_k.
    Returns:
      (B,) scores.
    """
    return (weights * attribute_scores).sum(-1)


def gated_bt_loss(weights: torch.Tensor, chosen_attr: torch.Tensor, rejected_attr: torch.Tensor, *,
                  beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """ArmoRM stage 2: Bradley-Terry loss -log sigmoid(beta (R_c - R_r)) on gated scores R = sum_k w_k r_k.

    The gate sees only the prompt, so chosen and rejected share the weights w; the backbone and the
    attribute heads are frozen and only the gating network learns (the caller detaches the attributes).
    Paper: Wang et al. 2024 (ArmoRM, arXiv:2406.12845), stage 2 (Bradley-Terry on the gated score).
    Deviation: beta is a fixed keyword scaling the score difference (beta = 1 is the plain BT loss on R);
    no reward-transformation matrix, no verbosity decorrelation.
    Args:
      weights: (B, K) gate weights of each pair's prompt.
      chosen_attr: (B, K) attribute scores of the chosen completions.
      rejected_attr: (B, K) attribute scores of the rejected completions.
      beta: scaling of the score difference (> 0).
    Returns:
      losses (B,); correct (B,) bool, detached: R_c > R_r.
    """
    chosen = gated_scores(weights, chosen_attr)  # (B,)
    rejected = gated_scores(weights, rejected_attr)  # (B,)
    return bradley_terry_loss(beta * chosen, beta * rejected)


def process_reward_loss(step_logits: torch.Tensor, step_labels: torch.Tensor) -> torch.Tensor:
    """Process reward model loss: BCE-with-logits of "this step is correct" at each step's separator token.

    Paper: Lightman et al. 2023 (Let's Verify Step by Step, PRM800K, arXiv:2305.20050); Wang et al. 2024
    (Math-Shepherd, arXiv:2312.08935), trained on hard-estimation step labels.
    Deviation: binary labels; PRM800K's three classes (positive/neutral/negative) must be mapped to two
    by the caller, and Math-Shepherd's soft labels
    (fraction of successful rollouts) are not supported.
    Args:
      step_logits: (N,) one logit per step, read at the step's last token
        (`alignlab.models.reward.step_scores`).
      step_labels: (N,) bool, True = the step is correct.
    Returns:
      (N,) loss per step.
    """
    return F.binary_cross_entropy_with_logits(step_logits, step_labels.to(step_logits.dtype), reduction="none")


def sft_regularization_loss(chosen_seq_logprobs: torch.Tensor, *, beta: float) -> torch.Tensor:
    """GRM's SFT regularizer -log sigmoid(beta * log pi(y_c | x)) on the reward model's own hidden states.

    The reward model keeps the base LM's head on its backbone; this term keeps the backbone's hidden states good
    for generating the chosen response, which Yang et al. find makes the reward generalize (and resist
    over-optimization) better. The recipe adds it to the reward loss: L = L_BT + coef * L_SFT. For
    beta * log pi << 0 it is beta * NLL(y_c) (softplus(-x) ~ -x); it vanishes as log pi -> 0.
    Paper: Yang et al. 2024 (Regularizing Hidden States Enables Learning Generalizable Reward Model for LLMs,
    GRM, arXiv:2406.10216), the text-generation regularizers of its method section, L_total = (1 - alpha) L_reward
    + alpha L_reg, with L_SFT = -log sigmoid(beta log pi(y_c | x)).
    Deviation: the weights are L_BT + coef * L_SFT (the paper's (1 - alpha) L_reward + alpha L_reg is this with
    coef = alpha / (1 - alpha) and the learning rate times (1 - alpha)).
    Args:
      chosen_seq_logprobs: (B,) log pi(y_c | x), summed over the chosen completion's tokens, from the LM head over
        the reward model's hidden states (`alignlab.models.logprobs.hidden_logprobs`).
      beta: > 0, scale of the log-likelihood inside the sigmoid (0.1 in the paper's code).
    Returns:
      (B,) loss.
    """
    return F.softplus(-beta * chosen_seq_logprobs)  # -log sigmoid(beta * log pi(y_c|x))


def dpo_regularization_loss(chosen_seq_logprobs: torch.Tensor, rejected_seq_logprobs: torch.Tensor, *,
                            beta: float) -> torch.Tensor:
    """GRM's reference-free DPO regularizer -log sigmoid(beta (log pi(y_c | x) - log pi(y_r | x))).

    The LM head over the reward model's hidden states is trained as a DPO policy without a reference model, so
    the hidden states also carry the preference as a generation likelihood gap.
    Paper: Yang et al. 2024 (GRM, arXiv:2406.10216), the DPO regularizer of its method section (reference-free
    form; the DPO loss is Rafailov et al. 2023, arXiv:2305.18290, Eq. 7).
    Deviation: no reference model (the paper also has a variant with one; not built); weights as in
    `sft_regularization_loss`.
    Args:
      chosen_seq_logprobs: (B,) log pi(y_c | x). rejected_seq_logprobs: (B,) log pi(y_r | x).
      beta: > 0, DPO temperature.
    Returns:
      (B,) loss.
    """
    return F.softplus(-beta * (chosen_seq_logprobs - rejected_seq_logprobs))
