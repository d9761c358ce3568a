"""Prompt sharing: a preference pair as ONE row, prompt + chosen + rejected, the prompt's tokens computed once.

A `collate_shared_prompt` batch (alignlab.data) holds B rows instead of the 2B rows of prompt + chosen and
prompt + rejected, with `segments (B, T)`: 0 prompt, 1 chosen, 2 rejected, -1 padding. The model sees:
  - `attention_mask (B, 1, T, T)`: token i attends to j <= i, except that rejected tokens never see chosen ones
    and nothing sees padding (padding sees itself, so no softmax row is empty);
  - `position_ids`: the rejected tokens restart where the prompt ends.
Every rejected token then has exactly the context and positions it has in its own prompt + rejected row, so its
hidden states, logits and log-probs equal those of the unshared layout up to float rounding (tests check 1e-5).
The first rejected token is predicted by the prompt's last hidden state, not by the token before it in the row:
`source_positions` gives the predicting position of every token. transformers (checked on 5.23) hands a 4D mask
to the attention as it is; SDPA takes it as bool (True = attend), eager attention adds it, so it is float there.
FlashAttention-style kernels take no custom mask, and a custom mask replaces the sliding window transformers would
build: `supports_shared_prompt` is False for those kernels and for windows a row could exceed.

Saved work: the prompt's tokens once per pair instead of twice (for 64-token prompts and 64-128-token completions,
about a fifth of the tokens) and the padding of the shorter completion; the attention of the longer row costs
O(T^2), which on small-hidden models eats part of the gain (benchmarks/results/dpo.md has the numbers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CHOSEN, REJECTED, PAD = 1, 2, -1


def inner_model(model: nn.Module) -> nn.Module:
    """The transformers model under DDP and peft wrappers."""
    while isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def attention_impl(model: nn.Module) -> str | None:
    """The model's attention implementation ("sdpa", "eager", "flash_attention_2", ...), None if unknown."""
    return getattr(getattr(inner_model(model), "config", None), "_attn_implementation", None)


def supports_shared_prompt(model: nn.Module, max_tokens: int | None = None) -> bool:
    """Whether `model` can run shared-prompt rows of up to `max_tokens` tokens: a transformers model with SDPA or
    eager attention (both take a custom 4D mask), `position_ids`, no prompt-learning peft adapter (virtual tokens
    shift every position), and no sliding-window layer whose window a row could exceed (a custom 4D mask replaces
    the window that transformers would build)."""
    peft_cfg = getattr(model, "active_peft_config", None)
    if peft_cfg is not None and getattr(peft_cfg, "is_prompt_learning", False):
        return False
    config = getattr(inner_model(model), "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or []
    windowed = window and (not layer_types or any("sliding" in t or "chunk" in t for t in layer_types))
    if windowed and (max_tokens is None or max_tokens > window):
        return False
    return attention_impl(model) in ("sdpa", "eager")


def shared_prompt_mask(segments: Tensor, dtype: torch.dtype = torch.bool) -> Tensor:
    """(B, 1, T, T) attention mask of shared-prompt rows: bool (True = attend) or an additive float mask."""
    n_tok = segments.shape[1]
    t = torch.arange(n_tok, device=segments.device)
    allowed = (t[None, :, None] >= t[None, None, :]) & (segments[:, None, :] != PAD)  # (B, T, T): i sees j <= i
    allowed &= ~((segments[:, :, None] == REJECTED) & (segments[:, None, :] == CHOSEN))  # rejected never sees chosen
    allowed |= torch.eye(n_tok, dtype=torch.bool, device=segments.device)  # padding sees itself: no empty row
    if dtype == torch.bool:
        return allowed[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min)[:, None]


def shared_model_inputs(model: nn.Module, batch: dict) -> dict:
    """Keyword arguments of the model call on a shared-prompt batch (4D mask in the form the attention takes)."""
    dtype = torch.bool if attention_impl(model) in ("sdpa", None) else torch.float32
    return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False,
            "attention_mask": shared_prompt_mask(batch["segments"], dtype)}


def source_positions(segments: Tensor, target_pos: Tensor) -> Tensor:
    """Flat positions (N,) of the hidden states that predict the tokens at flat positions `target_pos` (N,):
    the previous position, except for the first rejected token, predicted by the prompt's last token."""
    n_batch, n_tok = segments.shape
    before = F.pad(segments, (1, 0), value=PAD)[:, :-1]  # (B, T) segment of the previous position
    first_rejected = (segments == REJECTED) & (before != REJECTED)
    n_chosen = (segments == CHOSEN).sum(1, keepdim=True)  # (B, 1)
    skip = torch.where(first_rejected, n_chosen, 0).flatten()  # (B*T,) jump back over the chosen tokens
    return target_pos - 1 - skip.index_select(0, target_pos)


def realign_logits(logits: Tensor, segments: Tensor) -> Tensor:
    """Full logits (B, T, V) of a shared-prompt row reordered so that logits[:, t - 1] predicts token t, as in an
    ordinary row (for the full-logits fallback)."""
    n_batch, n_tok, vocab = logits.shape
    targets = torch.arange(1, n_batch * n_tok, device=logits.device)
    src = source_positions(segments, targets).clamp(min=0)  # row starts read garbage: never counted
    flat = logits.reshape(n_batch * n_tok, vocab).index_select(0, src)
    return torch.cat([flat, flat[-1:]]).view(n_batch, n_tok, vocab)


def split_pairs(values: Tensor, segments: Tensor) -> Tensor:
    """(B, T) per-token values of shared-prompt rows -> (2B, T): the chosen tokens' rows, then the rejected ones'."""
    return torch.cat([torch.where(segments == side, values, 0) for side in (CHOSEN, REJECTED)])
