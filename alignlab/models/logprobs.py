"""Per-token log-probs of a causal LM: the ONLY place logits become log-probs.

Convention: `logprobs[b, t] = log p(input_ids[b, t] | input_ids[b, :t])`, aligned with `input_ids`, and 0
where `response_mask` is False (`response_mask[:, 0]` never counts: nothing predicts the first token).

How (the fast path):
  1. run the model once; a forward pre-hook on the LM head (`get_output_embeddings()`) takes its input, the
     last hidden states, and hands the head only the last position, so no [B, T, V] logits are made while
     wrappers (peft, DDP) still run their own forward; the last layer's MLP runs only at the positions read
     below (`alignlab.models.last_layer`: prompt and padding positions skip it);
  2. gather the hidden state at t-1 for every counted target t:                 h (N, H), N = counted tokens
  3. project h through the LM head chunk by chunk inside one autograd.Function: z = head(h_c) / temperature,
     log p = z[y] - logsumexp(z) (+ entropy H = lse - sum(p z) when asked), in float32 on the chunk;
     backward recomputes the chunk's logits, so memory is O(chunk x V), never O(N x V).
Models without an output-embeddings module, and prompt-learning peft models (virtual tokens), fall back to
the plain full-logits path, `naive_logprobs` on `model(...).logits`. Logit transforms after the head are
read from the config (`final_logit_softcapping`, `logit_scale`, `output_multiplier`, `logits_scaling`: every
one used in transformers 5.23); a model that transforms its logits in some other way is not detected.

Packed rows (no attention_mask, position_ids reset to 0 at each sequence start): transformers (checked on
5.23, `masking_utils.find_packed_sequence_indices`) builds the block-diagonal causal mask from
the position ids when attention_mask is None and no KV cache is passed, so we pass `use_cache=False` and rely
on it. `packed_seq_logprobs` sums per packed sequence.

Shared-prompt rows (`segments` in the batch: prompt + chosen + rejected in one row, see
`alignlab.models.shared_prompt`) get their 4D attention mask here, and the first rejected token is read from the
prompt's last hidden state; `pair_logprobs` returns them as 2B rows, chosen then rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from alignlab.models.last_layer import last_mlp_at
from alignlab.models.shared_prompt import realign_logits, shared_model_inputs, source_positions, split_pairs


@dataclass
class LogProbs:
    """Per-token and per-sequence log-probs of one batch (float32)."""

    logprobs: Tensor  # (B, T), 0 where response_mask is False
    seq_logprobs: Tensor  # (B,) sum over counted tokens
    mean_logprobs: Tensor  # (B,) seq_logprobs / num_tokens (0 for a row without counted tokens)
    num_tokens: Tensor  # (B,) counted tokens per row
    entropy: Tensor | None = None  # (B, T) entropy of the next-token distribution, 0 where not counted


class _Head(NamedTuple):
    """The LM head: logits = softcap(scale * (h W^T + b)) / temperature."""

    head: nn.Module  # get_output_embeddings()
    scale: float  # logit_scale / output_multiplier / (1 / logits_scaling)
    softcap: float | None  # final_logit_softcapping


def _find_head(model: nn.Module) -> _Head | None:
    """Unwrap DDP/peft to the transformers CausalLM and describe its head; None -> use the full path."""
    inner = model
    while isinstance(inner, nn.parallel.DistributedDataParallel):  # (DataParallel replicas: full path)
        inner = inner.module
    if hasattr(inner, "get_base_model"):  # peft
        cfg = getattr(inner, "active_peft_config", None)
        if cfg is None or getattr(cfg, "is_prompt_learning", False):
            return None  # virtual tokens shift positions: hidden states no longer align with input_ids
        inner = inner.get_base_model()
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if head is None:
        return None
    config = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    scale = (float(getattr(config, "logit_scale", None) or 1.0)  # Cohere
             * float(getattr(config, "output_multiplier", None) or 1.0)  # MuseSpark
             / float(getattr(config, "logits_scaling", None) or 1.0))  # Granite
    softcap = getattr(config, "final_logit_softcapping", None)
    return _Head(head, scale, float(softcap) if softcap else None)


def _transform(z: Tensor, scale: float, softcap: float | None, temperature: float) -> Tensor:
    """In place on float32 logits z (n, V): z <- softcap(scale * z) / temperature."""
    if softcap is not None:
        z.mul_(scale / softcap).tanh_().mul_(softcap / temperature)
    elif scale != 1.0 or temperature != 1.0:
        z.mul_(scale / temperature)
    return z


def _compute_dtype(weight: Tensor) -> torch.dtype:
    """dtype of the head matmul: the autocast dtype when autocast is on, else the weight's dtype."""
    device = weight.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


def _chunk_logits(h: Tensor, w: Tensor, b: Tensor | None, buf: Tensor, spec: tuple) -> Tensor:
    """Float32 transformed logits of one chunk, written into `buf` (n, V) to reuse its pages."""
    out = buf[: h.shape[0]]
    if w.dtype == torch.float32:
        torch.mm(h, w.t(), out=out) if b is None else torch.addmm(b, h, w.t(), out=out)
    else:  # low-precision matmul (AMX bf16), log-softmax in float32
        out.copy_(F.linear(h, w, b))
    return _transform(out, *spec)


def _chunk_logp(h: Tensor, w: Tensor, b: Tensor | None, buf: Tensor, spec: tuple,
                lse: Tensor) -> tuple[Tensor, Tensor | None]:
    """Recompute log p = z - lse (n, V) into `buf`, and (1 - tanh^2) (n, V) when soft-capped (else None)."""
    scale, softcap, temperature = spec
    if softcap is None and b is None and w.dtype == torch.float32:
        # z - lse = (scale / T) h W^T - lse in one addmm: no separate pass for the scale and the subtraction
        out = buf[: h.shape[0]]
        return torch.addmm(lse[:, None].neg(), h, w.t(), alpha=scale / temperature, out=out), None
    z = _chunk_logits(h, w, b, buf, spec)
    # d z / d raw = (scale / T) (1 - tanh^2), with tanh = z T / softcap
    dcap = None if softcap is None else 1 - (z * (temperature / softcap)).square_()
    return z.sub_(lse[:, None]), dcap


def _lse_and_entropy(z: Tensor, work: Tensor, lse: Tensor, ent: Tensor | None) -> None:
    """lse = logsumexp(z) (n,) and, if `ent` is given, H = lse - sum_v p_v z_v, without (n, V) allocations.

    `work` (n, V) may be z itself when no entropy is asked for (z is then overwritten).
    """
    m = z.amax(dim=-1, keepdim=True)  # (n, 1)
    e = torch.sub(z, m, out=work).exp_()  # exp(z - m)
    total = e.sum(-1)  # (n,)
    if ent is not None:
        torch.sub(m.squeeze(1) + total.log(), torch.linalg.vecdot(e, z) / total, out=ent)
    torch.add(total.log_(), m.squeeze(1), out=lse)


class _LinearHeadLogprobs(torch.autograd.Function):
    """log p(y_i | h_i) (and entropy) through a linear head, chunked; logits recomputed in backward."""

    @staticmethod
    def forward(ctx, h, weight, bias, targets, spec, with_entropy, chunk_size):
        # h (N, H), weight (V, H), bias (V,) | None, targets (N,) -> logprobs (N,), entropy (N,) | None
        dtype, (n_rows, vocab) = _compute_dtype(weight), (h.shape[0], weight.shape[0])
        lp, lse = h.new_empty(n_rows, dtype=torch.float32), h.new_empty(n_rows, dtype=torch.float32)
        ent = h.new_empty(n_rows, dtype=torch.float32) if with_entropy else None
        with torch.autocast(h.device.type, enabled=False):
            w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
            buf = h.new_empty(min(chunk_size, n_rows), vocab, dtype=torch.float32)
            work = torch.empty_like(buf) if with_entropy else buf
            for s in range(0, n_rows, chunk_size):
                e = min(s + chunk_size, n_rows)
                z = _chunk_logits(h[s:e].to(dtype), w, b, buf, spec)  # (n, V) float32
                zy = z.gather(1, targets[s:e, None]).squeeze(1)  # (n,)
                _lse_and_entropy(z, work[: e - s], lse[s:e], None if ent is None else ent[s:e])
                torch.sub(zy, lse[s:e], out=lp[s:e])
        ctx.save_for_backward(h, weight, bias, targets, lse, ent)
        ctx.spec, ctx.chunk_size, ctx.dtype = spec, chunk_size, dtype
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        h, weight, bias, targets, lse, ent = ctx.saved_tensors
        spec, chunk, dtype = ctx.spec, ctx.chunk_size, ctx.dtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g_lp = torch.zeros_like(lse) if g_lp is None else g_lp.float()
        g_h = torch.empty_like(h) if need_h else None
        g_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        g_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        with torch.autocast(h.device.type, enabled=False):
            w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
            buf = h.new_empty(min(chunk, h.shape[0]), weight.shape[0], dtype=torch.float32)
            for s in range(0, h.shape[0], chunk):
                e = min(s + chunk, h.shape[0])
                h_c = h[s:e].to(dtype)
                logp, dcap = _chunk_logp(h_c, w, b, buf, spec, lse[s:e])  # (n, V)
                gz = _grad_z(logp, g_lp[s:e], targets[s:e],
                             None if g_ent is None else (g_ent[s:e].float(), ent[s:e]))
                gz.mul_(spec[0] / spec[2])  # d z / d raw = scale / T (times 1 - tanh^2 if soft-capped)
                if dcap is not None:
                    gz.mul_(dcap)
                g_raw = gz.to(dtype)
                if need_h:
                    g_h[s:e] = (g_raw @ w).to(h.dtype)
                if need_w:
                    g_w.add_(g_raw.t() @ h_c) if dtype != torch.float32 else g_w.addmm_(g_raw.t(), h_c)
                if need_b:
                    g_b.add_(gz.sum(0))
        g_w = None if g_w is None else g_w.to(weight.dtype)
        g_b = None if g_b is None else g_b.to(bias.dtype)
        return g_h, g_w, g_b, None, None, None, None


def _grad_z(logp: Tensor, g_lp: Tensor, targets: Tensor, ent: tuple | None) -> Tensor:
    """In place on log p (n, V): dL/dz = g_lp (onehot_y - p) - g_ent p (log p + H)."""
    if ent is None:
        gz = logp.exp_().mul_(-g_lp[:, None])
    else:
        g_ent, entropy = ent
        p = logp.exp()
        gz = logp.add_(entropy[:, None]).mul_(g_ent[:, None]).add_(g_lp[:, None]).mul_(p).neg_()
    return gz.scatter_add_(1, targets[:, None], g_lp[:, None])


def _module_head_logprobs(head: nn.Module, h: Tensor, targets: Tensor, spec: tuple, with_entropy: bool,
                          chunk_size: int) -> tuple[Tensor, Tensor | None]:
    """Same as _LinearHeadLogprobs for any head module (e.g. LoRA on lm_head), via per-chunk checkpointing."""

    def chunk_fn(h_c, y_c):
        z = _transform(head(h_c).float(), *spec)
        logp = z.log_softmax(-1)
        lp = logp.gather(1, y_c[:, None]).squeeze(1)
        return (lp, -(logp.exp() * logp).sum(-1)) if with_entropy else (lp,)

    outs = [checkpoint(chunk_fn, h[s:s + chunk_size], targets[s:s + chunk_size], use_reentrant=False)
            for s in range(0, h.shape[0], chunk_size)]
    if not outs:
        empty = h.new_zeros(0, dtype=torch.float32)
        return empty, (empty if with_entropy else None)
    return torch.cat([o[0] for o in outs]), (torch.cat([o[1] for o in outs]) if with_entropy else None)


def _model_inputs(model: nn.Module, batch: dict) -> dict:
    """Keyword arguments of the model call; packed rows must come without an attention_mask."""
    if "segments" in batch:
        return shared_model_inputs(model, batch)
    if batch.get("attention_mask") is not None and batch.get("position_ids") is not None:
        # With a 2D attention_mask transformers ignores position-id resets: packed sequences would attend
        # to each other silently.
        resets = (batch["position_ids"][:, 1:] == 0) & batch["attention_mask"][:, 1:].bool()
        if resets.any():
            raise ValueError("packed rows (position_ids reset to 0 mid-row) must have attention_mask=None, "
                             "else their sequences attend to each other")
    inputs = {"input_ids": batch["input_ids"], "use_cache": False}
    for key in ("attention_mask", "position_ids"):
        if batch.get(key) is not None:
            inputs[key] = batch[key]
    return inputs


def _sources(batch: dict, target_pos: Tensor) -> Tensor:
    """Flat positions of the hidden states that predict the tokens at `target_pos` (the previous ones)."""
    return source_positions(batch["segments"], target_pos) if "segments" in batch else target_pos - 1


def _full_logits(model: nn.Module, batch: dict, inputs: dict) -> Tensor:
    """(B, T, V) logits of the plain forward, `logits[:, t - 1]` predicting token t (shared rows realigned)."""
    logits = model(**inputs).logits
    return realign_logits(logits, batch["segments"]) if "segments" in batch else logits


def _head_input(model: nn.Module, head: nn.Module, inputs: dict) -> Tensor:
    """Last hidden states (B, T, H), the LM head's input, from one call of the full model.

    The head itself is then run on the last position only: its logits are thrown away.
    """
    captured = []

    def pre_hook(_module, args):
        if captured:  # a model calling its head twice: keep the first call (the next-token logits)
            return None
        captured.append(args[0])
        return (args[0][..., -1:, :], *args[1:])

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        model(**inputs)
    finally:
        handle.remove()
    shape = tuple(inputs["input_ids"].shape)
    if not captured or tuple(captured[0].shape[:2]) != shape:
        raise RuntimeError(f"{type(model).__name__}: the LM head's input is not (B, T, H) hidden states with "
                           f"(B, T) = {shape}; alignlab.models.logprobs does not support this architecture")
    return captured[0]


def compute_logprobs(model: nn.Module, batch: dict, *, temperature: float = 1.0, with_entropy: bool = False,
                     chunk_size: int | None = None) -> LogProbs:
    """Log-probs (and optionally entropies) of the counted tokens of `batch` under `model`.

    Args:
        model: a transformers causal LM, optionally wrapped by peft (LoRA) or DDP.
        batch: `input_ids (B, T)`, `response_mask (B, T) bool`, optional `attention_mask (B, T)` (absent for
            packed rows) and `position_ids (B, T)`.
        temperature: logits are divided by it (sampling temperature of the policy).
        with_entropy: also return the per-token entropy of the next-token distribution.
        chunk_size: positions projected through the LM head at a time; memory is O(chunk_size x V). Default:
            a float32 chunk of about 8 MiB (512 positions for V = 4096), at least 64 and at most 1024
            positions: small enough to stay in cache for the elementwise passes, big enough for the matmul.
    Returns:
        LogProbs, all float32; differentiable w.r.t. the model's parameters when grad is enabled.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    input_ids = batch["input_ids"]
    n_batch, n_tok = input_ids.shape
    mask = _counted(batch["response_mask"])  # (B, T)
    spec = _find_head(model)
    if spec is None:  # unknown head: plain full logits (B, T, V) in float32
        logits = _full_logits(model, batch, _model_inputs(model, batch))
        logprobs = naive_logprobs(logits, input_ids, mask, temperature)
        entropy = naive_entropy(logits, mask, temperature) if with_entropy else None
        return _summarize(logprobs, mask, entropy)
    # Counted targets at flat position i = b*T + t are predicted by the hidden state at i - 1 (shared-prompt rows:
    # the first rejected token by the prompt's last). nonzero() is the one host sync: N sizes everything after it.
    target_pos = mask.flatten().nonzero().squeeze(1)  # (N,)
    source_pos = _sources(batch, target_pos)  # (N,)
    with last_mlp_at(model, torch.unique(source_pos)):  # the last MLP only where a hidden state is read
        hidden = _head_input(model, spec.head, _model_inputs(model, batch))  # (B, T, H)
    h = hidden.reshape(n_batch * n_tok, -1).index_select(0, source_pos)  # (N, H)
    targets = input_ids.flatten().index_select(0, target_pos)  # (N,)
    head_spec = (spec.scale, spec.softcap, float(temperature))
    if chunk_size is None:
        weight = getattr(spec.head, "weight", None)
        chunk_size = _default_chunk_size(weight.shape[0] if weight is not None else 1 << 15)
    if type(spec.head) is nn.Linear:
        lp, ent = _LinearHeadLogprobs.apply(h, spec.head.weight, spec.head.bias, targets, head_spec,
                                            with_entropy, chunk_size)
    else:
        lp, ent = _module_head_logprobs(spec.head, h, targets, head_spec, with_entropy, chunk_size)
    zeros = lp.new_zeros(n_batch * n_tok)
    logprobs = zeros.index_put((target_pos,), lp).view(n_batch, n_tok)
    entropy = None if ent is None else zeros.index_put((target_pos,), ent).view(n_batch, n_tok)
    return _summarize(logprobs, mask, entropy)


def hidden_logprobs(head: nn.Module, hidden: Tensor, batch: dict, *, config=None,
                    chunk_size: int | None = None) -> LogProbs:
    """Log-probs of the counted tokens of `batch` from last hidden states (B, T, H) that some forward already made,
    through the LM head `head`: for a model whose own forward ends in another head, e.g. a reward model whose
    backbone also feeds the causal LM's head (Yang et al. 2024, GRM, arXiv:2406.10216).

    Same convention, chunked projection and shared-prompt rows (`segments`: returned as laid out, see `as_pairs`)
    as `compute_logprobs`; `config` (the causal LM's) supplies the logit scale and soft-cap, none when None.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = (float(getattr(text, "logit_scale", None) or 1.0) * float(getattr(text, "output_multiplier", None) or 1.0)
             / float(getattr(text, "logits_scaling", None) or 1.0))
    softcap = getattr(text, "final_logit_softcapping", None)
    n_batch, n_tok = batch["input_ids"].shape
    mask = _counted(batch["response_mask"])  # (B, T)
    target_pos = mask.flatten().nonzero().squeeze(1)  # (N,)
    h = hidden.reshape(n_batch * n_tok, -1).index_select(0, _sources(batch, target_pos))  # (N, H)
    targets = batch["input_ids"].flatten().index_select(0, target_pos)  # (N,)
    spec = (scale, float(softcap) if softcap else None, 1.0)
    weight = getattr(head, "weight", None)
    chunk_size = chunk_size or _default_chunk_size(weight.shape[0] if weight is not None else 1 << 15)
    if type(head) is nn.Linear:
        lp, _ = _LinearHeadLogprobs.apply(h, head.weight, head.bias, targets, spec, False, chunk_size)
    else:
        lp, _ = _module_head_logprobs(head, h, targets, spec, False, chunk_size)
    logprobs = lp.new_zeros(n_batch * n_tok).index_put((target_pos,), lp).view(n_batch, n_tok)
    return _summarize(logprobs, mask, None)


def pair_logprobs(model: nn.Module, batch: dict, **kwargs) -> LogProbs:
    """LogProbs of 2B rows, the B chosen completions then the B rejected ones, from one forward over either a
    `collate_preference` batch (2B rows already) or a `collate_shared_prompt` batch (B rows, prompt held once).

    Shared rows are split with `split_pairs`: row b holds the chosen tokens of pair b, row B + b its rejected
    tokens, at their positions in the shared row (T is the shared width). `kwargs` go to `compute_logprobs`.
    """
    return as_pairs(compute_logprobs(model, batch, **kwargs), batch)


def as_pairs(lp: LogProbs, batch: dict) -> LogProbs:
    """`lp` of a shared-prompt batch as 2B rows, chosen then rejected (`lp` itself for any other batch)."""
    if "segments" not in batch:
        return lp
    segments = batch["segments"]
    mask = split_pairs(_counted(batch["response_mask"]), segments).bool()  # (2B, T)
    entropy = None if lp.entropy is None else split_pairs(lp.entropy, segments)
    return _summarize(split_pairs(lp.logprobs, segments), mask, entropy)


def _default_chunk_size(vocab: int) -> int:
    """Positions per chunk so that one float32 (chunk, V) buffer is ~8 MiB, clamped to [64, 1024]."""
    return max(64, min(1024, (8 << 20) // (4 * max(vocab, 1))))


def _summarize(logprobs: Tensor, mask: Tensor, entropy: Tensor | None) -> LogProbs:
    num_tokens = mask.sum(-1)  # (B,)
    seq = logprobs.sum(-1)
    return LogProbs(logprobs, seq, seq / num_tokens.clamp(min=1), num_tokens, entropy)


def naive_logprobs(logits: Tensor, input_ids: Tensor, response_mask: Tensor,
                   temperature: float = 1.0) -> Tensor:
    """Reference: full float32 log_softmax over (B, T, V) logits, gathered at the next tokens.

    Returns (B, T) with logprobs[:, t] = log p(input_ids[:, t] | :t), 0 where response_mask is False.
    """
    logp = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)  # (B, T-1, V)
    lp = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    lp = torch.cat([lp.new_zeros(lp.shape[0], 1), lp], dim=1)  # (B, T)
    return torch.where(_counted(response_mask), lp, 0.0)


def naive_entropy(logits: Tensor, response_mask: Tensor, temperature: float = 1.0) -> Tensor:
    """Reference entropy (B, T) of the distribution that predicts token t, 0 where not counted."""
    logp = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    ent = -(logp.exp() * logp).sum(-1)
    ent = torch.cat([ent.new_zeros(ent.shape[0], 1), ent], dim=1)
    return torch.where(_counted(response_mask), ent, 0.0)


def _counted(response_mask: Tensor) -> Tensor:
    """response_mask as bool with position 0 off: nothing predicts the first token."""
    mask = response_mask.bool().clone()
    mask[:, 0] = False
    return mask


def packed_seq_logprobs(logprobs: Tensor, seq_lens: list[list[int]]) -> Tensor:
    """Sum a per-token tensor (B, T) over each packed sequence.

    Args:
        logprobs: (B, T) per-token values of packed rows (e.g. LogProbs.logprobs, or response_mask.float()
            to count tokens); positions past a row's sequences (padding) are ignored.
        seq_lens: for each row, the lengths of the sequences packed into it, in order.
    Returns:
        (S,) one sum per sequence, rows first then sequences: the order of the flattened `packed_row_ids`.
    """
    n_batch, n_tok = logprobs.shape
    n_seqs = sum(len(row) for row in seq_lens)
    seg: list[int] = []
    k = 0
    for row in seq_lens:
        ids = [i for j, n in enumerate(row) for i in [k + j] * n]
        seg.extend(ids + [n_seqs] * (n_tok - len(ids)))
        k += len(row)
    if len(seg) != n_batch * n_tok:
        raise ValueError(f"seq_lens must give B={n_batch} rows of at most T={n_tok} tokens each")
    seg_t = torch.tensor(seg, device=logprobs.device)
    sums = logprobs.new_zeros(n_seqs + 1).index_add(0, seg_t, logprobs.flatten())
    return sums[:n_seqs]
