"""The GRM text-generation regularizer of `alignlab rm` (Yang et al. 2024, arXiv:2406.10216): the base causal LM's
head over the reward model's own hidden states, one forward for the score and the log-probs.

    alignlab rm --dataset pairs.jsonl --rm.lm-coef 0.1                      # + 0.1 * -log sigmoid(0.1 log pi(y_c|x))
    alignlab rm --dataset pairs.jsonl --rm.lm-coef 0.1 --rm.lm-loss nll     # + 0.1 * token-mean NLL of y_c
    alignlab rm --dataset pairs.jsonl --rm.lm-coef 0.1 --rm.lm-loss dpo     # reference-free DPO regularizer

The head is `alignlab.models.reward.load_lm_head` (tied: the RM's input embedding; untied: frozen); it is held
by the recipe, not by the model, so checkpoints and the saved RM never contain it.
"""

from __future__ import annotations

import torch

from alignlab.losses.reward import dpo_regularization_loss, sft_regularization_loss
from alignlab.losses.sft import nll_loss
from alignlab.models.logprobs import LogProbs, as_pairs, hidden_logprobs
from alignlab.models.reward import reward_scores_and_hidden
from alignlab.models.shared_prompt import inner_model
from alignlab.recipes.reward_data import shared_prompt_forward


def _nll(lp: LogProbs, n: int, beta: float) -> torch.Tensor:
    """Token-mean NLL of the chosen completions: nll_loss averaged over each row's counted tokens."""
    return nll_loss(lp.logprobs[:n]).sum(-1) / lp.num_tokens[:n].clamp(min=1)


LM_LOSSES = {
    "sft": lambda lp, n, beta: sft_regularization_loss(lp.seq_logprobs[:n], beta=beta),
    "nll": _nll,
    "dpo": lambda lp, n, beta: dpo_regularization_loss(lp.seq_logprobs[:n], lp.seq_logprobs[n:], beta=beta),
}
"""rm.lm_loss -> (LogProbs of 2B rows chosen then rejected, B, beta) -> (B,) loss."""


def scores_and_hidden(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(2B, K) scores, chosen rows then rejected, and the (rows, T, H) hidden states of one forward."""
    if "segments" in batch:
        return shared_prompt_forward(model, batch, hidden=True)
    return reward_scores_and_hidden(model, batch)


def lm_regularizer(model, lm_head, hidden: torch.Tensor, batch: dict, *, kind: str, beta: float) -> torch.Tensor:
    """(B,) regularizer `LM_LOSSES[kind]` of each pair from the hidden states of its reward forward.

    `sft`/`nll` read the chosen tokens only (the LM head never runs over the rejected ones); `dpo` reads both.
    The model's config gives the LM's logit transforms (scale, soft-cap).
    """
    mask = batch["response_mask"]
    if kind != "dpo":  # chosen tokens only: the first half of the rows, or segment 1 of shared-prompt rows
        mask = mask & (batch["segments"] == 1) if "segments" in batch else torch.cat(
            [mask[: mask.shape[0] // 2], torch.zeros_like(mask[mask.shape[0] // 2:])])
    view = {**batch, "response_mask": mask}
    lp = as_pairs(hidden_logprobs(lm_head, hidden, view, config=inner_model(model).config), view)
    return LM_LOSSES[kind](lp, lp.seq_logprobs.shape[0] // 2, beta)
