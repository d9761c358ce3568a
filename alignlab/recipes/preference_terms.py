"""Loss terms of one micro-batch of the preference recipe (recipes/preference.py): the forward(s), the loss
function picked from the recipe's LOSSES table, and the sums of its metrics.

Each returns (per-example losses (B,), NLL sum of the chosen (best) completions' tokens, {metric: (sum, count)}).
- `pair_terms`: pairwise and reference-free losses; ONE forward over chosen||rejected (2B rows, or B shared-prompt
  rows read as 2B by `pair_logprobs`), the reference's log-probs of the same batch;
- `kto_terms`: KTO's completions with grad and its mismatched KL rows without, one reference call over both;
- `list_terms`: RRHF/PRO, all K completions of each list in one forward.
"""

from __future__ import annotations

import torch

from alignlab.losses import preference
from alignlab.models import compute_logprobs
from alignlab.models.logprobs import as_pairs, pair_logprobs
from alignlab.models.shared_prompt import split_pairs
from alignlab.models.token_kl import logprobs_and_token_kl

_d = lambda x: x.detach().float()  # a metric: no grad, float32


def _sums(values: dict, mask=None) -> dict:
    """{name: (sum, count)} of per-example values, over `mask` when given."""
    return {k: ((_d(v) * (1.0 if mask is None else mask)).sum(), v.shape[0] if mask is None else mask.sum())
            for k, v in values.items()}


def pair_terms(model, ref, batch: dict, loss, opts, state: dict):
    """Pairwise and reference-free losses: (losses (B,), NLL sum of the chosen tokens, metric sums)."""
    n = batch["index"].shape[0]
    if loss.inputs == "ref+kl":  # TDPO: token-level KL(ref || policy) from the same forward
        lp, token_kl = logprobs_and_token_kl(model, ref.model, batch, reference_context=ref.context)
        lp, seq_kl = as_pairs(lp, batch), (split_pairs(token_kl, batch["segments"]) if "segments" in batch
                                           else token_kl).sum(-1)  # (2B,)
    else:
        lp = pair_logprobs(model, batch)  # one forward over chosen||rejected (2B rows, or B shared-prompt rows)
    seq, mean = lp.seq_logprobs, lp.mean_logprobs  # (2B,)
    pc, pr, rc = seq[:n], seq[n:], None
    if loss.inputs in ("seq", "mean"):
        args = (pc, pr) if loss.inputs == "seq" else (mean[:n], mean[n:])
    else:
        ref_seq = ref.seq_logprobs(batch)
        rc, rr = ref_seq[:n], ref_seq[n:]
        args = (pc, pr, rc, rr) + ((seq_kl[:n], seq_kl[n:]) if loss.inputs == "ref+kl" else ())
    losses, chosen_r, rejected_r, *_ = loss.fn(*args, **loss.kwargs(opts, batch, state))
    values = {"rewards/chosen": chosen_r, "rewards/rejected": rejected_r, "rewards/margin": chosen_r - rejected_r,
              "rewards/accuracy": (chosen_r > rejected_r).float(), "logps/chosen": pc, "logps/rejected": pr}
    if rc is not None:
        values["kl"] = pc - rc  # log pi(y_w|x) - log ref(y_w|x): a (biased) estimate of KL(pi || ref)
    if loss.fn is preference.bco_pair_loss and torch.is_grad_enabled():  # delta: running mean of train rewards
        state["bco"] += torch.stack([torch.cat([_d(chosen_r), _d(rejected_r)]).mean(), pc.new_ones(())])
    return losses, -lp.logprobs[:n].sum(), _sums(values)


def kto_terms(model, ref, batch: dict, loss, opts, state: dict):
    """KTO: completions with grad, mismatched KL rows without; one reference forward over both."""
    n = batch["index"].shape[0]
    halves = [{k: v[s] for k, v in batch.items() if v.dim() == 2} for s in (slice(0, n), slice(n, None))]
    policy = compute_logprobs(model, halves[0]).seq_logprobs  # (B,)
    with torch.no_grad():
        policy_kl = compute_logprobs(model, halves[1]).seq_logprobs  # (B,)
    ref_seq = ref.seq_logprobs(batch)  # (2B,)
    desirable = batch["desirable"]
    losses, rewards, kl = loss.fn(policy, ref_seq[:n], desirable, policy_kl, ref_seq[n:],
                                  **loss.kwargs(opts, batch, state))
    d, u = desirable.float(), (~desirable).float()
    out = {**_sums({"rewards/chosen": rewards, "logps/chosen": policy}, d),
           **_sums({"rewards/rejected": rewards, "logps/rejected": policy}, u),
           **_sums({"rewards/accuracy": ((rewards > 0) == desirable).float()}), "kl": (_d(kl).mean() * n, n)}
    return losses, torch.zeros((), device=policy.device), out


def list_terms(model, ref, batch: dict, loss, opts, state: dict):
    """RRHF/PRO: all K completions of each list in one forward, scattered into (B, K) by `slot`."""
    lp = compute_logprobs(model, batch)
    n, width = batch["scores"].shape
    mean = lp.mean_logprobs.new_zeros(n * width).index_put((batch["slot"],), lp.mean_logprobs).view(n, width)
    losses, accuracy = loss.fn(mean, batch["scores"], **loss.kwargs(opts, batch, state))
    scores = batch["scores"].masked_fill(~batch["valid"], float("nan"))
    best, worst = (mean.gather(1, i[:, None])[:, 0] for i in (scores.nan_to_num(-1e30).argmax(-1),
                                                             scores.nan_to_num(1e30).argmin(-1)))
    values = {"rewards/chosen": best, "rewards/rejected": worst, "rewards/margin": best - worst,
              "rewards/accuracy": accuracy}  # rewards: token-mean log-probs of the best and worst completions
    return losses, -lp.logprobs[batch["nll_rows"]].sum(), _sums(values)
