"""Per-token KL(pi_ref || pi_theta) over the counted tokens, chunked like `compute_logprobs` (TDPO needs it).

Part of the log-prob layer (`alignlab.models.logprobs` is the only place logits become log-probs; this module
reuses its head detection, chunk sizes and shared-prompt handling).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from alignlab.models.last_layer import last_mlp_at
from alignlab.models.logprobs import (
    LogProbs,
    _counted,
    _default_chunk_size,
    _find_head,
    _full_logits,
    _head_input,
    _model_inputs,
    _sources,
    _summarize,
    _transform,
    naive_logprobs,
)


def compute_token_kl(policy: nn.Module, reference: nn.Module, batch: dict, *, chunk_size: int | None = None,
                     reference_context: Callable[[], contextlib.AbstractContextManager] | None = None) -> Tensor:
    """Per-token KL(pi_ref(.|x, y<t) || pi_theta(.|x, y<t)) over the counted tokens, (B, T), 0 elsewhere.

    Differentiable w.r.t. the policy only. See `logprobs_and_token_kl` (which also returns the policy's
    log-probs from the same forward).
    """
    return logprobs_and_token_kl(policy, reference, batch, chunk_size=chunk_size,
                                 reference_context=reference_context)[1]


def logprobs_and_token_kl(policy: nn.Module, reference: nn.Module, batch: dict, *, chunk_size: int | None = None,
                          reference_context: Callable[[], contextlib.AbstractContextManager] | None = None,
                          ) -> tuple[LogProbs, Tensor]:
    """The policy's LogProbs and the per-token KL(pi_ref || pi_theta) (B, T) of `batch`, one forward each.

    KL_t = sum_v pi_ref(v | h_t) (log pi_ref(v | h_t) - log pi_theta(v | h_t)), as TDPO needs it (Zeng et al.
    2024, arXiv:2404.11999, eq. 12). Both backbones run once; the two heads are then applied chunk by chunk to
    the counted positions inside `torch.utils.checkpoint`, so memory stays O(chunk_size x V): no float32
    [B, T, V] tensor of either model is ever made, and backward recomputes each chunk's logits.

    Args:
        policy, reference: causal LMs (peft/DDP wrappers allowed) with the same vocabulary.
        batch: as for `compute_logprobs`.
        reference_context: a factory of the context in which the reference runs, e.g. `policy.disable_adapter`
            when the reference is the LoRA base of the policy itself (then pass `reference=policy`).
    Returns:
        (LogProbs of the policy, KL (B, T) float32, grad flowing to the policy's parameters only).
    """
    ctx = reference_context or contextlib.nullcontext
    input_ids = batch["input_ids"]
    n_batch, n_tok = input_ids.shape
    mask = _counted(batch["response_mask"])  # (B, T)
    inputs = _model_inputs(policy, batch)
    spec, ref_spec = _find_head(policy), _find_head(reference)
    if spec is None or ref_spec is None:  # unknown head: plain full logits (B, T, V)
        logits = _full_logits(policy, batch, inputs)
        with torch.no_grad(), ctx():
            ref_logits = _full_logits(reference, batch, _model_inputs(reference, batch))
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        logq = torch.log_softmax(ref_logits[:, :-1].float(), -1)
        kl = F.pad((logq.exp() * (logq - logp)).sum(-1), (1, 0))
        return _summarize(naive_logprobs(logits, input_ids, mask), mask, None), torch.where(mask, kl, 0.0)
    target_pos = mask.flatten().nonzero().squeeze(1)  # (N,)
    source_pos = _sources(batch, target_pos)  # (N,)
    read = torch.unique(source_pos)
    with last_mlp_at(policy, read):
        hidden = _head_input(policy, spec.head, inputs)  # (B, T, H)
    with torch.no_grad(), ctx(), last_mlp_at(reference, read):
        ref_hidden = _head_input(reference, ref_spec.head, _model_inputs(reference, batch))  # (B, T, H_ref)
    h = hidden.reshape(n_batch * n_tok, -1).index_select(0, source_pos)  # (N, H)
    h_ref = ref_hidden.reshape(n_batch * n_tok, -1).index_select(0, source_pos)  # (N, H_ref)
    targets = input_ids.flatten().index_select(0, target_pos)  # (N,)
    if chunk_size is None:
        weight = getattr(spec.head, "weight", None)
        chunk_size = _default_chunk_size(weight.shape[0] if weight is not None else 1 << 15)

    def chunk_fn(h_c, h_ref_c, y_c):
        logp = _transform(spec.head(h_c).float(), spec.scale, spec.softcap, 1.0).log_softmax(-1)  # (n, V)
        with torch.no_grad(), ctx():
            logq = _transform(ref_spec.head(h_ref_c).float(), ref_spec.scale, ref_spec.softcap, 1.0)
            logq = logq.log_softmax(-1)  # (n, V)
        kl = (logq.exp() * (logq - logp)).sum(-1)  # (n,)
        return logp.gather(1, y_c[:, None]).squeeze(1), kl

    outs = [checkpoint(chunk_fn, h[s:s + chunk_size], h_ref[s:s + chunk_size], targets[s:s + chunk_size],
                       use_reentrant=False) for s in range(0, h.shape[0], chunk_size)]
    zeros = h.new_zeros(n_batch * n_tok, dtype=torch.float32)
    if not outs:
        return _summarize(zeros.view(n_batch, n_tok), mask, None), zeros.view(n_batch, n_tok)
    lp, kl = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
    logprobs = zeros.index_put((target_pos,), lp).view(n_batch, n_tok)
    return _summarize(logprobs, mask, None), zeros.index_put((target_pos,), kl).view(n_batch, n_tok)
