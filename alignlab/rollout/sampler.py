"""Batched next-token sampling: temperature, top-k, top-p (nucleus), greedy, and the sampler's log-probs.

The log-prob recorded for a sampled token is log_softmax(logits / temperature) of the FULL distribution (before
top-k / top-p filtering and before EOS suppression; temperature 1 for greedy), the quantity
`alignlab.models.compute_logprobs(model, batch, temperature=T)` recomputes, so PPO's "old" log-probs can come
straight from the sampler.

Papers: nucleus sampling, Holtzman et al. 2019 (arXiv:1904.09751), Sec. 3.1 (smallest prefix of the sorted
distribution whose mass reaches p); top-k, Fan et al. 2018 (arXiv:1805.04833), Sec. 5.4.
Deviation: ties at the k-th logit are all kept (as in transformers' TopKLogitsWarper), so top-k may keep more
than k tokens when logits tie exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor


def filter_logits(z: Tensor, *, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set to -inf the logits outside the top-k, then outside the top-p nucleus of what is left.

    Args:
        z: (A, V) float logits, already divided by the temperature.
        top_k: keep the k largest (0 = off).
        top_p: keep the smallest set of most likely tokens whose probability mass reaches top_p (1 = off).
    Returns:
        (A, V) a new tensor (z is not modified); at least one token per row stays finite.
    """
    if 0 < top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[:, -1:]  # (A, 1)
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        sorted_z, order = z.sort(dim=-1, descending=True)  # (A, V)
        probs = sorted_z.softmax(dim=-1)
        # drop token j when the mass of the tokens before it already reaches top_p (the first is never dropped)
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return z


def sample_tokens(logits: Tensor, *, temperature: float, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None, banned: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One token per row and its sampler log-prob.

    Args:
        logits: (A, V) next-token logits (any float dtype; computed in float32).
        temperature: > 0 samples from softmax(logits / temperature) after filtering; 0 is greedy (argmax).
        top_k, top_p: filters, see `filter_logits` (ignored when greedy).
        generator: the torch.Generator the draws come from (seeded by the engine).
        banned: (K,) token ids that may not be chosen at this step (EOS before min_new_tokens), or None.
    Returns:
        tokens (A,) long, logprobs (A,) float32 = log_softmax(logits / T)[token] of the unfiltered distribution
        (T = 1 when greedy).
    """
    logits = logits.float()
    if temperature == 0:
        logp = logits.log_softmax(dim=-1)  # (A, V)
        choose = logits if banned is None else logits.index_fill(-1, banned, float("-inf"))
        tokens = choose.argmax(dim=-1)
    else:
        z = logits / temperature
        logp = z.log_softmax(dim=-1)
        if banned is not None:
            z = z.index_fill(-1, banned, float("-inf"))
        z = filter_logits(z, top_k=top_k, top_p=top_p)
        tokens = draw(z.softmax(dim=-1), generator)
    return tokens, logp.gather(1, tokens[:, None]).squeeze(1)


def draw(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One index per row of `probs` (A, V) by inverse-CDF sampling: the first index whose cumulative mass
    exceeds u * total, u ~ U[0, 1). One uniform per row instead of torch.multinomial's V exponentials (on CPU
    multinomial costs ~15x more per step). Indices with zero probability are never drawn."""
    cdf = probs.cumsum(dim=-1)  # (A, V)
    total = cdf[:, -1:].contiguous()
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype)
    index = torch.searchsorted(cdf, u * total, right=True)  # (A, 1)
    # u * total can round up to total: fall back to the last index that still adds mass
    last = torch.searchsorted(cdf, total, right=False)
    return torch.minimum(index, last).squeeze(1)
