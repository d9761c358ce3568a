"""NativeEngine: alignlab's own batched decode loop over any transformers causal LM (the default engine).

What it does per chunk of `batch_size` rows (P' prompts x n samples):
  1. prefill each distinct prompt ONCE (left-padded, position ids from the mask), into a preallocated KV cache
     (`rollout.cache.SlabCache`), then copy the filled cache out to its n sample rows;
  2. decode token by token: sample all active rows at once (`rollout.sampler.sample_tokens`: temperature, top-k,
     top-p, greedy; the sampler log-prob of each token is recorded), feed the tokens back with one forward;
  3. rows that reached EOS are dropped from the active batch (cache rows compacted in place) once at least
     1/8 of the active rows are done, so compute shrinks as sequences finish; the loop ends when all are done.
The decode step makes no device sync except the finished-rows check (every step on CPU where it is free, every
`check_every` steps on an accelerator). Each decode step runs either `rollout.fused.FusedDecoder` (Llama family,
default on CPU: a few tensor ops per layer on packed weights) or the model's own forward with the slab cache
(any other supported model); on that generic path on CPU, float32 Linear weights get a column-major copy for the
duration of `generate` (same values, restored after): MKL runs the few-row decode matmuls x @ W^T about 2x faster
when W^T is row-major in memory.

Precision: with `dtype="bf16"` the whole call (prefill, decode, KV cache) runs on bfloat16 copies of the weights
(`rollout.precision.rollout_weights`, made from the current weights at the start of each call, the trainer's tensors
restored at its end); tokens are sampled from float32-upcast logits, and the recorded sampler log-probs are the
bfloat16 model's, so truncated importance sampling in the trainer sees the real sampler/trainer mismatch.

Seeds: one torch.Generator per `generate` call, seeded with `seed` (or a draw from torch's global RNG when None),
so the same seed, prompts and batch_size give the same samples. Output layout: see `Rollouts`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from alignlab.errors import ConfigError
from alignlab.rollout.base import Rollouts, Sampling, assemble_rollouts, check_request
from alignlab.rollout.cache import SlabCache
from alignlab.rollout.fused import FusedDecoder, fused_unsupported_reason
from alignlab.rollout.precision import rollout_dtype, rollout_weights
from alignlab.rollout.sampler import sample_tokens

logger = logging.getLogger("alignlab")


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model to call: DDP unwrapped, a peft LoRA model's base (its LoRA layers stay active)."""
    while isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def native_unsupported_reason(model: nn.Module) -> str | None:
    """Why NativeEngine cannot run `model` (None when it can): it needs a decoder-only transformers model whose
    attention layers all attend to the full past through `past_key_values`."""
    peft_cfg = getattr(model, "active_peft_config", None)
    if peft_cfg is not None and getattr(peft_cfg, "is_prompt_learning", False):
        return "peft prompt learning (virtual tokens) is not supported"
    inner = _unwrap(model)
    config = getattr(inner, "config", None)
    if config is None or not hasattr(inner, "get_output_embeddings"):
        return f"{type(inner).__name__} is not a transformers causal LM"
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder models are not supported"
    supports = getattr(inner, "_supports_default_dynamic_cache", None)
    if supports is not None and not supports():
        return f"{type(inner).__name__} uses its own cache type"
    params = inspect.signature(inner.forward).parameters
    if "past_key_values" not in params or "position_ids" not in params:
        return f"{type(inner).__name__}.forward takes no past_key_values/position_ids (not a KV-cache decoder)"
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None)
    if layer_types is not None and any(t != "full_attention" for t in layer_types):
        return f"layer types {sorted(set(layer_types))} (sliding-window / linear attention) are not supported"
    if layer_types is None and getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return "sliding-window attention is not supported"
    return None


@contextlib.contextmanager
def decode_layout(model: nn.Module):
    """On CPU, give every float32 nn.Linear weight W (out, in) a column-major copy for the duration (W^T is then
    row-major: MKL's few-row x @ W^T runs ~2x faster); the original tensors are put back on exit."""
    saved: dict[int, tuple[nn.Parameter, Tensor]] = {}
    for module in model.modules():
        w = getattr(module, "weight", None)
        if (isinstance(module, nn.Linear) and isinstance(w, nn.Parameter) and id(w) not in saved
                and w.device.type == "cpu" and w.dtype == torch.float32 and w.dim() == 2 and w.is_contiguous()):
            saved[id(w)] = (w, w.data)
            w.data = w.data.t().contiguous().t()
    try:
        yield
    finally:
        for w, data in saved.values():
            w.data = data


class NativeEngine:
    """Batched decoding with a preallocated KV cache; implements `RolloutEngine`.

    Args:
        model: a transformers causal LM (optionally peft-LoRA or DDP wrapped); the engine samples from it in place.
        tokenizer: its tokenizer; prompts are plain text (already rendered with any chat template), tokenized with
            special tokens, like `HFEngine`.
        batch_size: rows (samples) decoded together.
        check_every: decode steps between finished-rows checks (a device sync); default 1 on CPU, 8 elsewhere.
        fused: decode with `FusedDecoder` (True: required, error if the model is not supported; False: never;
            None: on CPU when supported). It holds one extra copy of the linear weights while generating.
        dtype: rollout precision: "auto" (the model's own dtype) or "bf16" (sample from bfloat16 copies of the
            weights, made per call; one more copy of the weights, in bfloat16, while generating).
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 64, check_every: int | None = None,
                 fused: bool | None = None, dtype: str = "auto"):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if tokenizer.eos_token_id is None:
            raise ConfigError("the tokenizer has no eos_token_id: NativeEngine stops each sequence at EOS")
        rollout_dtype(dtype)  # validates the name
        self.tokenizer, self.batch_size, self.check_every, self.fused = tokenizer, batch_size, check_every, fused
        self.dtype = dtype
        self.sync_weights(model)

    def sync_weights(self, model) -> None:
        reason = native_unsupported_reason(model)
        if reason is not None:
            raise ConfigError(f"NativeEngine cannot run {type(model).__name__}: {reason}; use backend='hf'")
        self.model, self.inner = model, _unwrap(model)
        params = inspect.signature(self.inner.forward).parameters
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self._decoder: FusedDecoder | None = None

    def uses_fused(self) -> bool:
        """Whether decode steps run `FusedDecoder` (default: on CPU, for the Llama family)."""
        if self.fused is False or fused_unsupported_reason(self.inner) is not None:
            if self.fused:
                raise ConfigError(f"fused=True but {fused_unsupported_reason(self.inner)}")
            return False
        return self.fused or next(self.inner.parameters()).device.type == "cpu"

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, sampling: Sampling, *, seed: int | None = None) -> Rollouts:
        check_request(prompts, n)
        tok = self.tokenizer
        prompt_ids = tok(list(prompts), add_special_tokens=True)["input_ids"]
        empty = [i for i, p in enumerate(prompt_ids) if not p]
        if empty:
            raise ConfigError(f"prompt(s) {empty[:5]} have no tokens (empty text and no BOS): nothing to condition on")
        device = next(self.inner.parameters()).device
        generator = torch.Generator(device=device)
        generator.manual_seed(int(torch.randint(0, 2**62, ())) if seed is None else seed)
        rows = [i for i in range(len(prompts)) for _ in range(n)]  # prompt index of each row, prompt-major
        completions, logprobs, finished = [], [], []
        was_training = self.model.training
        self.model.eval()
        fused = self.uses_fused()
        try:
            with contextlib.ExitStack() as stack:
                with record_function("alignlab.pack_weights"):  # the bf16 copies too (rollout dtype bf16)
                    stack.enter_context(rollout_weights(self.model, self.dtype))
                    if not fused:
                        stack.enter_context(decode_layout(self.inner))
                    self._decoder = FusedDecoder(self.inner) if fused else None
                for start in range(0, len(rows), self.batch_size):
                    chunk = rows[start:start + self.batch_size]
                    c, lp, f = self._generate_chunk([prompt_ids[i] for i in chunk], chunk, sampling, generator)
                    completions += c
                    logprobs += lp
                    finished += f
        finally:
            self._decoder = None  # the packed weights are a copy: do not keep it between calls
            self.model.train(was_training)
        return assemble_rollouts(tok, [prompts[i] for i in rows], [prompt_ids[i] for i in rows], completions,
                                 finished, n, logprobs)

    def _forward(self, input_ids: Tensor, mask: Tensor, position_ids: Tensor, cache: SlabCache) -> Tensor:
        out = self.inner(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                         use_cache=True, **self._keep_last)
        return out.logits[:, -1]  # (A, V)

    def _prefill(self, prompt_ids: list[list[int]], capacity: int, device) -> tuple[SlabCache, Tensor, Tensor]:
        """Left-padded forward of distinct prompts: (cache, last-position logits (U, V), prompt mask (U, W))."""
        width, pad = max(len(p) for p in prompt_ids), self._pad_id()
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], device=device)  # (U, W)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = SlabCache(capacity)
        with record_function("alignlab.prefill"):
            return cache, self._forward(ids, mask, positions, cache), mask

    def _generate_chunk(self, prompt_ids: list[list[int]], prompt_index: list[int], sampling: Sampling,
                        generator: torch.Generator) -> tuple[list[list[int]], list[list[float]], list[bool]]:
        """Decode one chunk of rows; returns per row the completion ids (EOS included), their sampler log-probs
        and whether the row stopped at EOS."""
        device = next(self.inner.parameters()).device
        distinct = list(dict.fromkeys(prompt_index))  # first-seen order
        where = {p: i for i, p in enumerate(distinct)}
        first_row = {p: prompt_index.index(p) for p in distinct}
        steps = sampling.max_new_tokens
        cache, logits, mask = self._prefill([prompt_ids[first_row[p]] for p in distinct],
                                            max(len(p) for p in prompt_ids) + steps, device)
        src = torch.tensor([where[p] for p in prompt_index], device=device)  # (R,) distinct prompt of each row
        if len(distinct) < len(prompt_index):
            cache.select(src)  # share the prompt prefill among the n samples
        logits, mask = logits.index_select(0, src), mask.index_select(0, src)
        tokens, logprobs = self._decode(cache, logits, mask, sampling, generator)
        eos = tokens == self.tokenizer.eos_token_id  # (R, S)
        stopped = eos.any(dim=1)
        lengths = torch.where(stopped, eos.int().argmax(dim=1) + 1, steps).tolist()
        tokens, logprobs = tokens.tolist(), logprobs.tolist()
        return ([t[:k] for t, k in zip(tokens, lengths)], [lp[:k] for lp, k in zip(logprobs, lengths)],
                stopped.tolist())

    def _step_mask(self, mask: Tensor, steps: int) -> tuple[Tensor, bool]:
        """The decode-time attention mask buffer over prompt + new positions: an additive (R, 1, 1, W + S) mask
        passed as is (no per-step mask building) for eager/SDPA attention, else the plain (R, W + S) 0/1 mask."""
        full = torch.cat([mask, mask.new_ones(mask.shape[0], steps)], dim=1)  # (R, W + S)
        impl = getattr(self.inner.config, "_attn_implementation", None)
        if self._decoder is None and impl not in ("sdpa", "eager"):
            return full, False
        dtype = next(self.inner.parameters()).dtype
        bias = torch.zeros(full.shape, dtype=dtype, device=full.device).masked_fill_(full == 0,
                                                                                    torch.finfo(dtype).min)
        return bias[:, None, None, :], True

    def _decode(self, cache: SlabCache, logits: Tensor, mask: Tensor, sampling: Sampling,
                generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Sample `max_new_tokens` steps for all rows: (tokens (R, S) long, logprobs (R, S) float32) on CPU, with
        -1 / 0 after a row was dropped (it had reached EOS before)."""
        rows, width, steps = mask.shape[0], mask.shape[1], sampling.max_new_tokens
        device, eos_id = logits.device, self.tokenizer.eos_token_id
        every = self.check_every or (1 if device.type == "cpu" else 8)
        out_tokens = torch.full((rows, steps), -1, dtype=torch.long, device=device)
        out_logprobs = torch.zeros((rows, steps), dtype=torch.float32, device=device)
        step_mask, is_4d = self._step_mask(mask, steps)
        active = torch.arange(rows, device=device)  # original row of each active row
        done = torch.zeros(rows, dtype=torch.bool, device=device)
        positions = mask.sum(dim=1, keepdim=True)  # (A, 1) position of the next token
        banned = torch.tensor([eos_id], device=device)
        n_active = rows
        for step in range(steps):
            with record_function("alignlab.sample"):
                tokens, logprobs = sample_tokens(logits, temperature=sampling.temperature, top_k=sampling.top_k,
                                                 top_p=sampling.top_p, generator=generator,
                                                 banned=banned if step < sampling.min_new_tokens else None)
            out_tokens[active, step] = tokens
            out_logprobs[active, step] = logprobs
            done |= tokens == eos_id
            if step + 1 == steps:
                break
            if (step + 1) % every == 0:
                n_done = int(done.sum())
                if n_done == n_active:
                    break
                if n_done and n_done * 8 >= n_active:  # drop finished rows
                    keep = (~done).nonzero().squeeze(1)
                    n_active = keep.shape[0]
                    with record_function("alignlab.drop_rows"):
                        cache.select(keep)
                    step_mask[:n_active] = step_mask.index_select(0, keep)
                    active, done, positions, tokens = active[keep], done[keep], positions[keep], tokens[keep]
            length = width + step + 1
            view = step_mask[:n_active, ..., :length] if is_4d else step_mask[:n_active, :length]
            with record_function("alignlab.decode_step"):
                if self._decoder is not None:
                    logits = self._decoder.step(tokens, positions, view, cache)
                else:
                    logits = self._forward(tokens[:, None], view, positions, cache)
            positions += 1
        return out_tokens.cpu(), out_logprobs.cpu()

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad
